DROP TRIGGER ledger_balance_events ON accounts_creditledgerentry;
DROP FUNCTION billing_balance_events();
