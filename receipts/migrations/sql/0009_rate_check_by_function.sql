-- CHECK receipt_charged_at_its_rate, now through billing_charged_credits() (accounts 0008), so the rounding
-- is written once in SQL. Still NOT VALID: receipts charged before at another rate are not re-judged.
ALTER TABLE receipts_chargereceipt DROP CONSTRAINT receipt_charged_at_its_rate;
ALTER TABLE receipts_chargereceipt
  ADD CONSTRAINT receipt_charged_at_its_rate
  CHECK (charged_credits = billing_charged_credits(cost_usd, credits_per_usd, markup)) NOT VALID;
