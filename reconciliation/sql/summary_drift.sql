-- summary_drift: LedgerDailySummary differs from the ledger on a day of the window
-- (grouped by account, UTC day, reason and model group).
WITH ledger AS (
    SELECT e.account_id, (e.created_at AT TIME ZONE 'UTC')::date AS day, e.reason,
           COALESCE(r.model_group, '') AS model_group, count(*) AS entries,
           sum(e.amount_credits) AS amount_credits, sum(COALESCE(r.prompt_tokens, 0)) AS prompt_tokens,
           sum(COALESCE(r.completion_tokens, 0)) AS completion_tokens,
           sum(COALESCE(r.total_tokens, 0)) AS total_tokens, sum(COALESCE(r.cost_usd, 0)) AS cost_usd
      FROM accounts_creditledgerentry e
      LEFT JOIN receipts_chargereceipt r ON r.id = e.receipt_id
     WHERE e.created_at >= %(days_from)s AND e.created_at < %(days_to)s
       AND (%(account)s::bigint IS NULL OR e.account_id = %(account)s)
     GROUP BY 1, 2, 3, 4
), kept AS (
    SELECT account_id, day, reason, model_group, entries, amount_credits, prompt_tokens,
           completion_tokens, total_tokens, cost_usd
      FROM invoices_ledgerdailysummary
     WHERE day >= %(first_day)s AND day <= %(last_day)s
       AND (%(account)s::bigint IS NULL OR account_id = %(account)s)
)
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'summary_drift',
       concat_ws('/', COALESCE(l.account_id, k.account_id), COALESCE(l.day, k.day),
                 COALESCE(l.reason, k.reason), COALESCE(l.model_group, k.model_group)),
       COALESCE(l.day, k.day)::timestamp AT TIME ZONE 'UTC',
       jsonb_build_object(
           'account', (SELECT a.public_id::text FROM accounts_billingaccount a
                        WHERE a.id = COALESCE(l.account_id, k.account_id)),
           'day', COALESCE(l.day, k.day), 'reason', COALESCE(l.reason, k.reason),
           'model_group', COALESCE(l.model_group, k.model_group),
           'ledger', CASE WHEN l.day IS NULL THEN NULL ELSE jsonb_build_object(
               'entries', l.entries, 'amount_credits', l.amount_credits,
               'prompt_tokens', l.prompt_tokens, 'completion_tokens', l.completion_tokens,
               'total_tokens', l.total_tokens, 'cost_usd', l.cost_usd) END,
           'summary', CASE WHEN k.day IS NULL THEN NULL ELSE jsonb_build_object(
               'entries', k.entries, 'amount_credits', k.amount_credits,
               'prompt_tokens', k.prompt_tokens, 'completion_tokens', k.completion_tokens,
               'total_tokens', k.total_tokens, 'cost_usd', k.cost_usd) END)
  FROM ledger l
  FULL JOIN kept k ON (k.account_id, k.day, k.reason, k.model_group)
                    = (l.account_id, l.day, l.reason, l.model_group)
 WHERE (l.entries, l.amount_credits, l.prompt_tokens, l.completion_tokens, l.total_tokens, l.cost_usd)
       IS DISTINCT FROM
       (k.entries, k.amount_credits, k.prompt_tokens, k.completion_tokens, k.total_tokens, k.cost_usd)
