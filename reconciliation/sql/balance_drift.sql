-- balance_drift: an account's balance differs from the sum of its ledger.
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'balance_drift', a.public_id::text, NULL,
       jsonb_build_object('account', a.public_id::text, 'name', a.name,
                          'balance_credits', a.balance_credits, 'ledger_sum', COALESCE(l.total, 0),
                          'difference', a.balance_credits - COALESCE(l.total, 0))
  FROM accounts_billingaccount a
  LEFT JOIN (SELECT account_id, sum(amount_credits) AS total FROM accounts_creditledgerentry
              WHERE (%(account)s::bigint IS NULL OR account_id = %(account)s)
              GROUP BY account_id) l ON l.account_id = a.id
 WHERE a.balance_credits <> COALESCE(l.total, 0)
   AND (%(account)s::bigint IS NULL OR a.id = %(account)s)
