-- unknown_to_litellm of one run: a receipt of the run (its run id, or an attempt's end user
-- "{run_id}/{attempt}") started in the window that none of the run's spend-log rows matches.
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'unknown_to_litellm', r.litellm_call_id, COALESCE(r.started_at, r.created_at),
       jsonb_build_object(
           'litellm_call_id', r.litellm_call_id, 'request_id', r.request_id, 'receipt_id', r.id,
           'account', (SELECT a.public_id::text FROM accounts_billingaccount a WHERE a.id = r.account_id),
           'end_user', r.end_user, 'cost_usd', r.cost_usd, 'charged_credits', r.charged_credits,
           'started_at', r.started_at, 'created_at', r.created_at)
  FROM receipts_chargereceipt r
 WHERE (r.run_id = %(run_id)s OR r.end_user = ANY(%(end_users)s::text[]))
   AND COALESCE(r.started_at, r.created_at) >= %(since)s AND COALESCE(r.started_at, r.created_at) < %(until)s
   AND NOT EXISTS (SELECT 1 FROM reconcile_rows s WHERE s.litellm_call_id = r.litellm_call_id)
   AND NOT EXISTS (SELECT 1 FROM reconcile_rows s WHERE s.base_request_id = r.request_id)
