-- orphan_usage, the ledger side: a usage entry of the window without its receipt,
-- or a non-usage entry with one.
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'orphan_usage', 'ledger:' || e.id, e.created_at,
       jsonb_build_object('problem', CASE WHEN e.reason = 'usage' THEN 'usage entry without a receipt'
                                          ELSE 'non-usage entry with a receipt' END,
                          'ledger_entry', e.id, 'reason', e.reason, 'receipt_id', e.receipt_id,
                          'account', (SELECT a.public_id::text FROM accounts_billingaccount a WHERE a.id = e.account_id),
                          'amount_credits', e.amount_credits)
  FROM accounts_creditledgerentry e
 WHERE e.created_at >= %(since)s AND e.created_at < %(until)s
   AND (%(account)s::bigint IS NULL OR e.account_id = %(account)s)
   AND ((e.reason = 'usage') = (e.receipt_id IS NULL))
