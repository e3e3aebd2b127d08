-- CHECK receipt_charged_at_its_rate: a receipt's credits are exactly ceil(cost × its own rate × markup).
-- NOT VALID: receipts charged before at another rate are not re-judged (their rate is today's best guess).
ALTER TABLE receipts_chargereceipt
  ADD CONSTRAINT receipt_charged_at_its_rate
  CHECK (charged_credits = ceil(cost_usd * credits_per_usd * markup)) NOT VALID;
