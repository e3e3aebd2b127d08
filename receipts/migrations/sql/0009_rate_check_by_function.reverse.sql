ALTER TABLE receipts_chargereceipt DROP CONSTRAINT receipt_charged_at_its_rate;
ALTER TABLE receipts_chargereceipt
  ADD CONSTRAINT receipt_charged_at_its_rate
  CHECK (charged_credits = ceil(cost_usd * credits_per_usd * markup)) NOT VALID;
