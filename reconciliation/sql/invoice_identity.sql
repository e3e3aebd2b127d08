-- invoice_identity, run once per month of the window: for an account, opening + added − used
-- (read like the invoice, from the summary) differs from the closing balance the ledger gives,
-- or the opening balances differ. ms/me: the first instant of the month and of the next one.
WITH ledger AS (
    SELECT account_id,
           sum(amount_credits) FILTER (WHERE created_at < %(ms)s) AS opening,
           sum(amount_credits) AS closing
      FROM accounts_creditledgerentry
     WHERE created_at < %(me)s AND (%(account)s::bigint IS NULL OR account_id = %(account)s)
     GROUP BY account_id
), kept AS (
    SELECT account_id,
           sum(amount_credits) FILTER (WHERE day < %(ms_day)s) AS opening,
           sum(amount_credits) FILTER (WHERE day >= %(ms_day)s AND reason <> 'usage') AS added,
           -sum(amount_credits) FILTER (WHERE day >= %(ms_day)s AND reason = 'usage') AS used
      FROM invoices_ledgerdailysummary
     WHERE day < %(me_day)s AND (%(account)s::bigint IS NULL OR account_id = %(account)s)
     GROUP BY account_id
), book AS (
    SELECT COALESCE(l.account_id, k.account_id) AS account_id,
           COALESCE(l.opening, 0) AS ledger_opening, COALESCE(l.closing, 0) AS ledger_closing,
           COALESCE(k.opening, 0) AS opening, COALESCE(k.added, 0) AS added, COALESCE(k.used, 0) AS used
      FROM ledger l FULL JOIN kept k ON k.account_id = l.account_id
)
INSERT INTO reconcile_found (kind, ref, at, detail)
SELECT 'invoice_identity', b.account_id || '/' || %(period)s, %(ms)s,
       jsonb_build_object('account', (SELECT a.public_id::text FROM accounts_billingaccount a WHERE a.id = b.account_id),
                          'period', %(period)s, 'opening', b.opening, 'added', b.added,
                          'used', b.used, 'closing', b.ledger_closing,
                          'ledger_opening', b.ledger_opening,
                          'difference', b.opening + b.added - b.used - b.ledger_closing)
  FROM book b
 WHERE b.opening + b.added - b.used <> b.ledger_closing OR b.opening <> b.ledger_opening
