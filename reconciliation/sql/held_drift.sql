-- held_drift: an account's held_credits (kept by the holds' trigger, read by authorize) differs from the sum
-- of its open holds (status held).
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'held_drift', a.public_id::text, NULL,
       jsonb_build_object('account', a.public_id::text, 'name', a.name,
                          'held_credits', a.held_credits, 'open_holds', COALESCE(h.total, 0),
                          'difference', a.held_credits - COALESCE(h.total, 0))
  FROM accounts_billingaccount a
  LEFT JOIN (SELECT account_id, sum(held_credits) AS total FROM accounts_credithold
              WHERE status = 'held' AND (%(account)s::bigint IS NULL OR account_id = %(account)s)
              GROUP BY account_id) h ON h.account_id = a.id
 WHERE a.held_credits <> COALESCE(h.total, 0)
   AND (%(account)s::bigint IS NULL OR a.id = %(account)s)
