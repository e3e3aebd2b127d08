CREATE OR REPLACE FUNCTION billing_ledger_summarise_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One statement: the new entries are joined to their receipts once (`e`, materialised because
    -- both summaries read it), then each summary gets one upsert per group, in key order.
    WITH e AS MATERIALIZED (
        SELECT n.account_id, n.created_at, n.reason, n.amount_credits, n.receipt_id, r.model_group,
               r.api_key_hash, r.api_key_alias, r.end_user, r.prompt_tokens, r.completion_tokens,
               r.total_tokens, r.cost_usd
          FROM new_entries n
          LEFT JOIN receipts_chargereceipt r ON r.id = n.receipt_id
    ), daily AS (
        INSERT INTO invoices_ledgerdailysummary AS s
            (account_id, day, reason, model_group, entries, amount_credits,
             prompt_tokens, completion_tokens, total_tokens, cost_usd)
        SELECT e.account_id, (e.created_at AT TIME ZONE 'UTC')::date, e.reason, COALESCE(e.model_group, ''),
               count(*), sum(e.amount_credits), COALESCE(sum(e.prompt_tokens), 0),
               COALESCE(sum(e.completion_tokens), 0), COALESCE(sum(e.total_tokens), 0),
               COALESCE(sum(e.cost_usd), 0)
          FROM e
         GROUP BY 1, 2, 3, 4
         ORDER BY 1, 2, 3, 4
        ON CONFLICT (account_id, day, reason, model_group) DO UPDATE SET
            entries = s.entries + EXCLUDED.entries,
            amount_credits = s.amount_credits + EXCLUDED.amount_credits,
            prompt_tokens = s.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = s.completion_tokens + EXCLUDED.completion_tokens,
            total_tokens = s.total_tokens + EXCLUDED.total_tokens,
            cost_usd = s.cost_usd + EXCLUDED.cost_usd
    )
    INSERT INTO invoices_ledgerpayersummary AS p
        (account_id, day, api_key_hash, end_user, api_key_alias, entries, amount_credits,
         prompt_tokens, completion_tokens, total_tokens, cost_usd)
    
    SELECT e.account_id, (e.created_at AT TIME ZONE 'UTC')::date, e.api_key_hash, e.end_user,
           max(e.api_key_alias), count(*), sum(e.amount_credits), sum(e.prompt_tokens),
           sum(e.completion_tokens), sum(e.total_tokens), sum(e.cost_usd)

      FROM e
     WHERE e.receipt_id IS NOT NULL
     GROUP BY 1, 2, 3, 4
     ORDER BY 1, 2, 3, 4
    ON CONFLICT (account_id, day, api_key_hash, end_user) DO UPDATE SET
        api_key_alias = GREATEST(p.api_key_alias, EXCLUDED.api_key_alias),
        entries = p.entries + EXCLUDED.entries,
        amount_credits = p.amount_credits + EXCLUDED.amount_credits,
        prompt_tokens = p.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = p.completion_tokens + EXCLUDED.completion_tokens,
        total_tokens = p.total_tokens + EXCLUDED.total_tokens,
        cost_usd = p.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END
$$;

