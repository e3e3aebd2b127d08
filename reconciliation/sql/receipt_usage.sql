-- The receipt side of the window in one join (a receipt has at most one ledger entry: receipt_id is unique):
-- orphan_usage: a receipt without exactly one usage entry;
-- credits_mismatch: charged credits differ from ceil(cost × the receipt's own rate × markup), or the usage entry
-- does not debit exactly the receipt's credits.
WITH bad AS MATERIALIZED (
    SELECT r.id, r.litellm_call_id, r.account_id, r.cost_usd, r.charged_credits, r.created_at,
           e.id AS entry_id, e.reason AS entry_reason, e.amount_credits,
           billing_charged_credits(r.cost_usd, r.credits_per_usd, r.markup) AS expected
      FROM receipts_chargereceipt r
      LEFT JOIN accounts_creditledgerentry e ON e.receipt_id = r.id
     WHERE r.created_at >= %(since)s AND r.created_at < %(until)s
       AND (%(account)s::bigint IS NULL OR r.account_id = %(account)s)
       AND (e.id IS NULL OR e.reason <> 'usage' OR e.amount_credits <> -r.charged_credits
            OR r.charged_credits <> billing_charged_credits(r.cost_usd, r.credits_per_usd, r.markup))
)
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'orphan_usage', 'receipt:' || b.id, b.created_at,
       jsonb_build_object('problem', 'receipt without exactly one usage entry', 'receipt_id', b.id,
                          'litellm_call_id', b.litellm_call_id,
                          'account', (SELECT a.public_id::text FROM accounts_billingaccount a WHERE a.id = b.account_id),
                          'usage_entries', CASE WHEN b.entry_reason = 'usage' THEN 1 ELSE 0 END,
                          'charged_credits', b.charged_credits)
  FROM bad b
 WHERE b.entry_id IS NULL OR b.entry_reason <> 'usage'
UNION ALL
SELECT 'credits_mismatch', 'receipt:' || b.id, b.created_at,
       jsonb_build_object('receipt_id', b.id, 'litellm_call_id', b.litellm_call_id,
                          'account', (SELECT a.public_id::text FROM accounts_billingaccount a WHERE a.id = b.account_id),
                          'cost_usd', b.cost_usd, 'charged_credits', b.charged_credits,
                          'expected_credits', b.expected, 'ledger_amount_credits', b.amount_credits)
  FROM bad b
 WHERE b.charged_credits <> b.expected OR (b.entry_reason = 'usage' AND b.amount_credits <> -b.charged_credits)
