DROP TRIGGER account_promotional_guard ON accounts_billingaccount;
DROP FUNCTION billing_account_promotional_guard();
DROP TRIGGER promotional_guard ON accounts_promotionalcredit;
DROP FUNCTION billing_promotional_guard();
DROP FUNCTION billing_promotional_burn(bigint, bigint, timestamptz);
CREATE OR REPLACE FUNCTION billing_ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    receipt_account bigint;
    receipt_credits bigint;
BEGIN
    IF NEW.receipt_id IS NOT NULL THEN
        SELECT account_id, charged_credits INTO receipt_account, receipt_credits
          FROM receipts_chargereceipt WHERE id = NEW.receipt_id;
        IF receipt_account IS DISTINCT FROM NEW.account_id OR NEW.amount_credits <> -receipt_credits THEN
            RAISE EXCEPTION 'usage entry must debit % credits from account % for receipt %',
                receipt_credits, receipt_account, NEW.receipt_id
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    UPDATE accounts_billingaccount
       SET balance_credits = balance_credits + NEW.amount_credits
     WHERE id = NEW.account_id
    RETURNING balance_credits INTO NEW.balance_after;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'billing account % does not exist', NEW.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    -- The default id was drawn before the account row was locked; draw it again
    -- now, under the lock, so that id order is balance_after chain order.
    NEW.id := nextval(pg_get_serial_sequence('accounts_creditledgerentry', 'id'));
    RETURN NEW;
END
$$;
