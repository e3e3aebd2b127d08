-- The open holds' total kept with the account (issue 19: authorize stays O(1) in the holds in flight).
--
-- credithold_held_total (AFTER INSERT OR UPDATE OF status, held_credits OR DELETE on accounts_credithold,
-- function billing_credithold_held_total()): accounts_billingaccount.held_credits moves by the change in the
-- hold's open amount (held_credits while status = 'held', else 0), in the same statement as the hold.
-- account_held_guard (BEFORE INSERT OR UPDATE OF held_credits on accounts_billingaccount, function
-- billing_held_guard()): a new account starts at 0, and nothing but that trigger (depth >= 2) changes it.

-- No hold changes between the backfill and the triggers (released at commit).
LOCK TABLE accounts_credithold IN SHARE MODE;

UPDATE accounts_billingaccount a
   SET held_credits = h.total
  FROM (SELECT account_id, sum(held_credits) AS total FROM accounts_credithold
         WHERE status = 'held' GROUP BY account_id) h
 WHERE h.account_id = a.id;

CREATE FUNCTION billing_credithold_held_total() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before_open bigint := 0;
    after_open bigint := 0;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'held' THEN
        before_open := OLD.held_credits;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'held' THEN
        after_open := NEW.held_credits;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.account_id IS DISTINCT FROM NEW.account_id THEN
        RAISE EXCEPTION 'a credit hold never moves to another account' USING ERRCODE = 'restrict_violation';
    END IF;
    IF after_open <> before_open THEN
        UPDATE accounts_billingaccount
           SET held_credits = held_credits + after_open - before_open
         WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.account_id ELSE NEW.account_id END;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER credithold_held_total AFTER INSERT OR UPDATE OF status, held_credits OR DELETE
    ON accounts_credithold FOR EACH ROW EXECUTE FUNCTION billing_credithold_held_total();

CREATE FUNCTION billing_held_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.held_credits <> 0 THEN
            RAISE EXCEPTION 'a new billing account holds 0 credits' USING ERRCODE = 'check_violation';
        END IF;
    -- Depth 1 is a direct UPDATE; the hold trigger's own UPDATE runs at depth 2.
    ELSIF NEW.held_credits IS DISTINCT FROM OLD.held_credits AND pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'held_credits of account % changes only with its credit holds', OLD.id
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER account_held_guard BEFORE INSERT OR UPDATE OF held_credits ON accounts_billingaccount
    FOR EACH ROW EXECUTE FUNCTION billing_held_guard();
