DROP TRIGGER account_held_guard ON accounts_billingaccount;
DROP FUNCTION billing_held_guard();
DROP TRIGGER credithold_held_total ON accounts_credithold;
DROP FUNCTION billing_credithold_held_total();
