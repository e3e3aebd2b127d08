CREATE FUNCTION billing_ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER ledger_apply BEFORE INSERT ON accounts_creditledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_ledger_apply();

CREATE FUNCTION billing_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused (write a correcting entry instead)', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END
$$;

CREATE TRIGGER ledger_append_only BEFORE UPDATE OR DELETE ON accounts_creditledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();
CREATE TRIGGER receipt_append_only BEFORE UPDATE OR DELETE ON receipts_chargereceipt
    FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();

CREATE FUNCTION billing_balance_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.balance_credits <> 0 THEN
            RAISE EXCEPTION 'a new billing account starts at 0 credits; grant credits through the ledger'
                USING ERRCODE = 'check_violation';
        END IF;
    -- Depth 1 is a direct UPDATE; the ledger trigger's own UPDATE runs at depth 2.
    ELSIF NEW.balance_credits IS DISTINCT FROM OLD.balance_credits AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'balance_credits of account % changes only by appending a ledger entry', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER account_balance_guard BEFORE INSERT OR UPDATE OF balance_credits ON accounts_billingaccount
    FOR EACH ROW EXECUTE FUNCTION billing_balance_guard();
