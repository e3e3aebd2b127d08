-- unknown_to_litellm: a receipt of the window that LiteLLM has no spend log for.
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'unknown_to_litellm', r.litellm_call_id, COALESCE(r.started_at, r.created_at),
       jsonb_build_object(
           'litellm_call_id', r.litellm_call_id, 'request_id', r.request_id, 'receipt_id', r.id,
           'account', (SELECT a.public_id::text FROM accounts_billingaccount a WHERE a.id = r.account_id),
           'end_user', r.end_user, 'cost_usd', r.cost_usd, 'charged_credits', r.charged_credits,
           'started_at', r.started_at, 'created_at', r.created_at)
  FROM reconcile_diff d
  JOIN receipts_chargereceipt r ON r.litellm_call_id = d.receipt_call_id
 WHERE d.request_id IS NULL
   AND COALESCE(r.started_at, r.created_at) >= %(since)s AND COALESCE(r.started_at, r.created_at) < %(until)s
   AND (%(account)s::bigint IS NULL OR r.account_id = %(account)s)
   AND NOT EXISTS (SELECT 1 FROM reconcile_rows s WHERE s.base_request_id = r.request_id)
