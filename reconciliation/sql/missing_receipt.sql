-- missing_receipt: LiteLLM billed a call (a success, or a failure with a cost) that has no receipt.
-- Healable (backfilled by --apply) unless it has no call id or cost, or waits as a deferred
-- zero-cost record whose cost is unknown. With an account: only its end users' calls.
INSERT INTO reconcile_found (kind, ref, at, healable, detail)
SELECT 'missing_receipt', d.request_id, d.start_time,
       d.litellm_call_id IS NOT NULL AND d.spend IS NOT NULL
         AND NOT (d.spend = 0 AND dd.reason = 'unknown_cost' AND dd.status = ANY(%(open_statuses)s)),
       jsonb_build_object(
           'litellm_call_id', d.litellm_call_id, 'request_id', d.request_id,
           'end_user', d.end_user, 'status', COALESCE(d.status, 'success'),
           'litellm_spend', d.spend, 'model_group', d.model_group, 'start_time', d.start_time,
           'account', (SELECT a.public_id::text
                         FROM accounts_enduseralias al JOIN accounts_billingaccount a ON a.id = al.account_id
                        WHERE al.end_user = d.end_user),
           'deferred', CASE WHEN dd.id IS NULL THEN NULL ELSE jsonb_build_object(
               'id', dd.id, 'reason', dd.reason, 'status', dd.status, 'attempts', dd.attempts) END)
  FROM reconcile_diff d
  LEFT JOIN LATERAL (
        SELECT id, reason, status, attempts FROM receipts_deferredusage x
         WHERE d.litellm_call_id IS NOT NULL AND x.litellm_call_id = d.litellm_call_id
         ORDER BY x.status = ANY(%(open_statuses)s) DESC, x.id DESC
         LIMIT 1
       ) dd ON true
 WHERE d.request_id IS NOT NULL AND COALESCE(d.receipts, 0) = 0
   AND (COALESCE(d.status, 'success') <> 'failure' OR d.spend > 0)
   AND (%(account)s::bigint IS NULL
        OR d.end_user IN (SELECT end_user FROM accounts_enduseralias WHERE account_id = %(account)s))
