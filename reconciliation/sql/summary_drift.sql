-- summary_drift: a summary the ledger trigger keeps differs from the ledger on a day of the window.
-- Two summaries, one kind (detail.table names which):
--   daily: invoices_ledgerdailysummary, grouped by account, UTC day, reason and model group;
--   payer: invoices_ledgerpayersummary, the usage entries grouped by account, UTC day, API key hash and
--          end user of their receipts (the key alias kept is the greatest one seen).
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
), payer_ledger AS (
    SELECT e.account_id, (e.created_at AT TIME ZONE 'UTC')::date AS day, r.api_key_hash, r.end_user,
           max(r.api_key_alias) AS api_key_alias, count(*) AS entries, sum(e.amount_credits) AS amount_credits,
           sum(r.prompt_tokens) AS prompt_tokens, sum(r.completion_tokens) AS completion_tokens,
           sum(r.total_tokens) AS total_tokens, sum(r.cost_usd) AS cost_usd
      FROM accounts_creditledgerentry e
      JOIN receipts_chargereceipt r ON r.id = e.receipt_id
     WHERE e.created_at >= %(days_from)s AND e.created_at < %(days_to)s
       AND (%(account)s::bigint IS NULL OR e.account_id = %(account)s)
     GROUP BY 1, 2, 3, 4
), payer_kept AS (
    SELECT account_id, day, api_key_hash, end_user, api_key_alias, entries, amount_credits, prompt_tokens,
           completion_tokens, total_tokens, cost_usd
      FROM invoices_ledgerpayersummary
     WHERE day >= %(first_day)s AND day <= %(last_day)s
       AND (%(account)s::bigint IS NULL OR account_id = %(account)s)
)
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'summary_drift',
       concat_ws('/', COALESCE(l.account_id, k.account_id), COALESCE(l.day, k.day),
                 COALESCE(l.reason, k.reason), COALESCE(l.model_group, k.model_group)),
       COALESCE(l.day, k.day)::timestamp AT TIME ZONE 'UTC',
       jsonb_build_object(
           'table', 'invoices_ledgerdailysummary',
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
UNION ALL
SELECT 'summary_drift',
       concat_ws('/', 'payer', COALESCE(l.account_id, k.account_id), COALESCE(l.day, k.day),
                 COALESCE(l.api_key_hash, k.api_key_hash), COALESCE(l.end_user, k.end_user)),
       COALESCE(l.day, k.day)::timestamp AT TIME ZONE 'UTC',
       jsonb_build_object(
           'table', 'invoices_ledgerpayersummary',
           'account', (SELECT a.public_id::text FROM accounts_billingaccount a
                        WHERE a.id = COALESCE(l.account_id, k.account_id)),
           'day', COALESCE(l.day, k.day), 'api_key_hash', COALESCE(l.api_key_hash, k.api_key_hash),
           'end_user', COALESCE(l.end_user, k.end_user),
           'ledger', CASE WHEN l.day IS NULL THEN NULL ELSE jsonb_build_object(
               'entries', l.entries, 'amount_credits', l.amount_credits, 'api_key_alias', l.api_key_alias,
               'prompt_tokens', l.prompt_tokens, 'completion_tokens', l.completion_tokens,
               'total_tokens', l.total_tokens, 'cost_usd', l.cost_usd) END,
           'summary', CASE WHEN k.day IS NULL THEN NULL ELSE jsonb_build_object(
               'entries', k.entries, 'amount_credits', k.amount_credits, 'api_key_alias', k.api_key_alias,
               'prompt_tokens', k.prompt_tokens, 'completion_tokens', k.completion_tokens,
               'total_tokens', k.total_tokens, 'cost_usd', k.cost_usd) END)
  FROM payer_ledger l
  FULL JOIN payer_kept k ON (k.account_id, k.day, k.api_key_hash, k.end_user)
                          = (l.account_id, l.day, l.api_key_hash, l.end_user)
 WHERE (l.entries, l.amount_credits, l.api_key_alias, l.prompt_tokens, l.completion_tokens, l.total_tokens,
        l.cost_usd)
       IS DISTINCT FROM
       (k.entries, k.amount_credits, k.api_key_alias, k.prompt_tokens, k.completion_tokens, k.total_tokens,
        k.cost_usd)
