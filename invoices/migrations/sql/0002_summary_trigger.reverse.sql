DROP TRIGGER summary_guard ON invoices_ledgerdailysummary;
DROP FUNCTION billing_summary_guard();
DROP TRIGGER ledger_summarise ON accounts_creditledgerentry;
DROP FUNCTION billing_ledger_summarise();
