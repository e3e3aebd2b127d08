-- Rows of the window without a receipt near it: look their receipts up across all time (one
-- index probe each), by request id for rows without a call id.
UPDATE reconcile_diff d
   SET (receipts, cost_usd, account_id, receipt_id) = (
        SELECT count(*), sum(r.cost_usd), min(r.account_id), min(r.id) FROM receipts_chargereceipt r
         WHERE (d.litellm_call_id IS NOT NULL AND r.litellm_call_id = d.litellm_call_id)
            OR (d.base_request_id IS NOT NULL AND r.request_id = d.base_request_id))
 WHERE d.request_id IS NOT NULL AND d.receipt_call_id IS NULL
