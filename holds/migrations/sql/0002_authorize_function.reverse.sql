DROP FUNCTION billing_authorize_hold(bigint, text, bigint, numeric, text, text, timestamptz, integer, integer);
