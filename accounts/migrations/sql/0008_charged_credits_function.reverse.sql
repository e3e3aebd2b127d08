DROP FUNCTION billing_charged_credits(numeric, numeric, numeric);
