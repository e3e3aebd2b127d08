-- Promotional credit (issue 18): lots that expire and are used before paid credit.
--
-- ledger_apply (function billing_ledger_apply(), replaced): as before, and
--   * an entry naming a promotional grant (promotional_credit_id) moves that lot: its `grant` entry funds it
--     (amount = granted_credits), its `expiry` entry takes exactly its unused remainder at or after expires_at;
--   * a usage debit burns the account's unexpired lots first, by priority then soonest expiry then id, when
--     the account has promotional credit at all (accounts_billingaccount.promotional_credits > 0, read from the
--     row the balance UPDATE already returns: accounts without promotions pay nothing more).
--   All of it under the account's row lock (the balance UPDATE comes first), so lots never race.
-- billing_promotional_burn(account, credits, at): that burn, returning the credits taken from lots.
-- promotional_guard (BEFORE INSERT OR UPDATE OR DELETE on accounts_promotionalcredit, function
--   billing_promotional_guard()): a lot starts unfunded (remaining 0, not expired); its money columns change
--   only inside the ledger trigger (depth >= 2); a lot is never deleted.
-- account_promotional_guard (BEFORE INSERT OR UPDATE OF promotional_credits on accounts_billingaccount,
--   function billing_account_promotional_guard()): starts at 0, moved only by the ledger trigger.

CREATE OR REPLACE FUNCTION billing_ledger_apply() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    receipt_account bigint;
    receipt_credits bigint;
    promotional bigint;
    lot accounts_promotionalcredit%ROWTYPE;
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
    RETURNING balance_credits, promotional_credits INTO NEW.balance_after, promotional;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'billing account % does not exist', NEW.account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF NEW.promotional_credit_id IS NOT NULL THEN
        SELECT * INTO lot FROM accounts_promotionalcredit WHERE id = NEW.promotional_credit_id FOR UPDATE;
        IF lot.account_id IS DISTINCT FROM NEW.account_id THEN
            RAISE EXCEPTION 'promotional grant % is not of account %', NEW.promotional_credit_id, NEW.account_id
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.reason = 'grant' THEN
            IF NEW.amount_credits <> lot.granted_credits OR lot.remaining_credits <> 0 OR lot.expired_at IS NOT NULL THEN
                RAISE EXCEPTION 'promotional grant % is funded once, by exactly its % credits', lot.id, lot.granted_credits
                    USING ERRCODE = 'check_violation';
            END IF;
        ELSIF NEW.reason = 'expiry' THEN
            IF lot.remaining_credits = 0 OR NEW.amount_credits <> -lot.remaining_credits
               OR NEW.created_at < lot.expires_at OR lot.expired_at IS NOT NULL THEN
                RAISE EXCEPTION 'promotional grant % expires once, at % or later, taking exactly its % unused credits',
                    lot.id, lot.expires_at, lot.remaining_credits
                    USING ERRCODE = 'check_violation';
            END IF;
        END IF;
        UPDATE accounts_promotionalcredit
           SET remaining_credits = remaining_credits + NEW.amount_credits,
               expired_at = CASE WHEN NEW.reason = 'expiry' THEN NEW.created_at ELSE expired_at END
         WHERE id = lot.id;
        UPDATE accounts_billingaccount SET promotional_credits = promotional_credits + NEW.amount_credits
         WHERE id = NEW.account_id;
    ELSIF promotional > 0 AND NEW.reason = 'usage' AND NEW.amount_credits < 0 THEN
        PERFORM billing_promotional_burn(NEW.account_id, -NEW.amount_credits, NEW.created_at);
    END IF;
    -- The default id was drawn before the account row was locked; draw it again
    -- now, under the lock, so that id order is balance_after chain order.
    NEW.id := nextval(pg_get_serial_sequence('accounts_creditledgerentry', 'id'));
    RETURN NEW;
END
$$;

CREATE FUNCTION billing_promotional_burn(account bigint, credits bigint, at timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    lot record;
    still_owed bigint := credits;
    taken bigint;
BEGIN
    FOR lot IN
        -- No FOR UPDATE: every change of a lot happens under its account's row lock, which the caller holds.
        SELECT id, remaining_credits FROM accounts_promotionalcredit
         WHERE account_id = account AND expired_at IS NULL AND remaining_credits > 0 AND expires_at > at
         ORDER BY priority, expires_at, id
    LOOP
        taken := LEAST(still_owed, lot.remaining_credits);
        UPDATE accounts_promotionalcredit SET remaining_credits = remaining_credits - taken WHERE id = lot.id;
        still_owed := still_owed - taken;
        EXIT WHEN still_owed = 0;
    END LOOP;
    IF still_owed < credits THEN
        UPDATE accounts_billingaccount SET promotional_credits = promotional_credits - (credits - still_owed)
         WHERE id = account;
    END IF;
    RETURN credits - still_owed;
END
$$;

CREATE FUNCTION billing_promotional_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'a promotional grant is never deleted (its ledger entries name it)'
            USING ERRCODE = 'restrict_violation';
    ELSIF TG_OP = 'INSERT' THEN
        IF NEW.remaining_credits <> 0 OR NEW.expired_at IS NOT NULL THEN
            RAISE EXCEPTION 'a promotional grant starts unfunded: its grant ledger entry funds it'
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF pg_trigger_depth() < 2 AND (
            NEW.remaining_credits IS DISTINCT FROM OLD.remaining_credits
            OR NEW.granted_credits IS DISTINCT FROM OLD.granted_credits
            OR NEW.account_id IS DISTINCT FROM OLD.account_id
            OR NEW.expires_at IS DISTINCT FROM OLD.expires_at
            OR NEW.priority IS DISTINCT FROM OLD.priority
            OR NEW.expired_at IS DISTINCT FROM OLD.expired_at) THEN
        RAISE EXCEPTION 'promotional grant % changes only through its ledger entries', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER promotional_guard BEFORE INSERT OR UPDATE OR DELETE ON accounts_promotionalcredit
    FOR EACH ROW EXECUTE FUNCTION billing_promotional_guard();

CREATE FUNCTION billing_account_promotional_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.promotional_credits <> 0 THEN
            RAISE EXCEPTION 'a new billing account has no promotional credit' USING ERRCODE = 'check_violation';
        END IF;
    ELSIF NEW.promotional_credits IS DISTINCT FROM OLD.promotional_credits AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'promotional_credits of account % changes only by appending a ledger entry', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER account_promotional_guard BEFORE INSERT OR UPDATE OF promotional_credits ON accounts_billingaccount
    FOR EACH ROW EXECUTE FUNCTION billing_account_promotional_guard();
