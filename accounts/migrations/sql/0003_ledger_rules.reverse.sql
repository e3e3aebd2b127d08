DROP TRIGGER account_balance_guard ON accounts_billingaccount;
DROP FUNCTION billing_balance_guard();
DROP TRIGGER receipt_append_only ON receipts_chargereceipt;
DROP TRIGGER ledger_append_only ON accounts_creditledgerentry;
DROP FUNCTION billing_refuse_change();
DROP TRIGGER ledger_apply ON accounts_creditledgerentry;
DROP FUNCTION billing_ledger_apply();
