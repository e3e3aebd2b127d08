-- One hash join of every spend-log row with the receipts started near the window, by call id,
-- keeping only the differences (normally a handful of rows): a receipt of the window without
-- a row, a row of the window without a receipt, or a call whose costs differ.
-- A receipt's time is COALESCE(started_at, created_at): its startTime is the spend log's.
CREATE TEMP TABLE reconcile_diff AS
WITH rec AS (
    SELECT r.litellm_call_id, count(*) AS receipts, sum(r.cost_usd) AS cost_usd,
           min(r.account_id) AS account_id, min(r.id) AS receipt_id,
           bool_or(COALESCE(r.started_at, r.created_at) >= %(since)s
                   AND COALESCE(r.started_at, r.created_at) < %(until)s) AS in_window
      FROM receipts_chargereceipt r
     WHERE COALESCE(r.started_at, r.created_at) >= %(near_from)s
       AND COALESCE(r.started_at, r.created_at) < %(near_to)s
     GROUP BY r.litellm_call_id
)
SELECT DISTINCT ON (s.request_id, rec.litellm_call_id)
       s.request_id, s.litellm_call_id, s.base_request_id, s.spend, s.status, s.end_user,
       s.model_group, s.start_time, rec.litellm_call_id AS receipt_call_id, rec.receipts,
       rec.cost_usd, rec.account_id, rec.receipt_id
  FROM reconcile_rows s
  FULL JOIN rec ON rec.litellm_call_id = s.litellm_call_id
 WHERE (s.request_id IS NULL AND rec.in_window)
    OR (s.start_time >= %(since)s AND s.start_time < %(until)s
        AND CASE WHEN rec.litellm_call_id IS NULL
                 THEN COALESCE(s.status, 'success') <> 'failure' OR s.spend > 0
                 ELSE rec.cost_usd IS DISTINCT FROM s.spend OR rec.receipts > 1 END)
 ORDER BY s.request_id, rec.litellm_call_id
