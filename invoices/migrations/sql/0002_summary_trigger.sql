CREATE FUNCTION billing_ledger_summarise() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r receipts_chargereceipt%ROWTYPE;
BEGIN
    IF NEW.receipt_id IS NOT NULL THEN
        SELECT * INTO r FROM receipts_chargereceipt WHERE id = NEW.receipt_id;
    END IF;
    INSERT INTO invoices_ledgerdailysummary AS s
        (account_id, day, reason, model_group, entries, amount_credits,
         prompt_tokens, completion_tokens, total_tokens, cost_usd)
    VALUES
        (NEW.account_id, (NEW.created_at AT TIME ZONE 'UTC')::date, NEW.reason, COALESCE(r.model_group, ''), 1,
         NEW.amount_credits, COALESCE(r.prompt_tokens, 0), COALESCE(r.completion_tokens, 0),
         COALESCE(r.total_tokens, 0), COALESCE(r.cost_usd, 0))
    ON CONFLICT (account_id, day, reason, model_group) DO UPDATE SET
        entries = s.entries + 1,
        amount_credits = s.amount_credits + EXCLUDED.amount_credits,
        prompt_tokens = s.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = s.completion_tokens + EXCLUDED.completion_tokens,
        total_tokens = s.total_tokens + EXCLUDED.total_tokens,
        cost_usd = s.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_summarise AFTER INSERT ON accounts_creditledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_ledger_summarise();

-- Only the ledger trigger (depth 2) may write the summary; direct writes are refused.
CREATE FUNCTION billing_summary_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'invoices_ledgerdailysummary is written only by the ledger trigger: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER summary_guard BEFORE INSERT OR UPDATE OR DELETE ON invoices_ledgerdailysummary
    FOR EACH ROW EXECUTE FUNCTION billing_summary_guard();
