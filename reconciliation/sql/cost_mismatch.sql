-- cost_mismatch: the receipt's cost differs from LiteLLM's spend, or the call has more than one receipt.
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'cost_mismatch', d.request_id, d.start_time,
       jsonb_build_object(
           'litellm_call_id', d.litellm_call_id, 'request_id', d.request_id, 'end_user', d.end_user,
           'status', COALESCE(d.status, 'success'), 'litellm_spend', d.spend,
           'receipt_cost_usd', d.cost_usd, 'receipts', d.receipts, 'receipt_id', d.receipt_id,
           'account', (SELECT a.public_id::text FROM accounts_billingaccount a WHERE a.id = d.account_id),
           'start_time', d.start_time)
  FROM reconcile_diff d
 WHERE d.request_id IS NOT NULL AND d.receipts > 0
   AND (d.cost_usd IS DISTINCT FROM d.spend OR d.receipts > 1)
   AND (%(account)s::bigint IS NULL OR d.account_id = %(account)s)
