-- FUNCTION billing_charged_credits(cost_usd, credits_per_usd, markup): the one rounding of money in SQL,
-- twin of accounts.money.charged_credits(): ceil(cost × rate × markup) in exact numeric, never rounded down.
-- Used by the CHECK receipt_charged_at_its_rate and by reconcile (reconciliation/sql/receipt_usage.sql).
CREATE FUNCTION billing_charged_credits(cost_usd numeric, credits_per_usd numeric, markup numeric)
    RETURNS numeric LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
SELECT ceil(cost_usd * credits_per_usd * markup)
$$;
