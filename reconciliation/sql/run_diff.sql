-- Per-run reconcile: reconcile_rows holds one run's spend-log rows (a handful), each with its
-- receipts found across all time by call id (by request id for rows without one). Same columns as
-- litellm_diff.sql, so missing_receipt.sql and cost_mismatch.sql read it unchanged.
CREATE TEMP TABLE reconcile_diff AS
SELECT DISTINCT ON (s.request_id)
       s.request_id, s.litellm_call_id, s.base_request_id, s.spend, s.status, s.end_user,
       s.model_group, s.start_time, NULL::text AS receipt_call_id, r.receipts,
       r.cost_usd, r.account_id, r.receipt_id
  FROM reconcile_rows s
 CROSS JOIN LATERAL (
        SELECT count(*) AS receipts, sum(x.cost_usd) AS cost_usd, min(x.account_id) AS account_id,
               min(x.id) AS receipt_id
          FROM receipts_chargereceipt x
         WHERE (s.litellm_call_id IS NOT NULL AND x.litellm_call_id = s.litellm_call_id)
            OR (s.base_request_id IS NOT NULL AND x.request_id = s.base_request_id)
       ) r
 ORDER BY s.request_id
