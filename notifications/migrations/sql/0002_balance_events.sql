-- Balance events decided by the ledger, in the statement that appends the entry (the outbox pattern).
--
-- ledger_balance_events (AFTER INSERT on accounts_creditledgerentry, FOR EACH ROW, function
-- billing_balance_events()): with before = balance_after − amount_credits and after = balance_after,
--   * going down: one `balance.low` per alert threshold t of the account with after < t <= before, and
--     `balance.depleted` when before > 0 >= after;
--   * going up: one `balance.recovered` per threshold with before < t <= after, and one (threshold 0) when
--     before <= 0 < after and the account's last depletion event is not yet recovered (a new account's
--     first credit is not a recovery).
--   A crossing is an event once: it cannot repeat until the balance has crossed back (the hysteresis is
--   the balance itself). Rows go to notifications_billingevent, dispatched after commit by the worker.
--   An entry that crosses nothing costs one index probe of notifications_balancealert.

CREATE FUNCTION billing_balance_events() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    before bigint := NEW.balance_after - NEW.amount_credits;
    after bigint := NEW.balance_after;
BEGIN
    IF after < before THEN
        INSERT INTO notifications_billingevent (public_id, account_id, type, data, ledger_entry_id, created_at)
        SELECT gen_random_uuid(), NEW.account_id, 'balance.low',
               jsonb_build_object('account', b.public_id::text, 'threshold_credits', a.threshold_credits,
                                  'balance_credits', after, 'previous_balance_credits', before,
                                  'ledger_entry', NEW.id, 'reason', NEW.reason),
               NEW.id, now()
          FROM notifications_balancealert a JOIN accounts_billingaccount b ON b.id = a.account_id
         WHERE a.account_id = NEW.account_id AND a.threshold_credits > after AND a.threshold_credits <= before
         ORDER BY a.threshold_credits DESC;
        IF before > 0 AND after <= 0 THEN
            INSERT INTO notifications_billingevent (public_id, account_id, type, data, ledger_entry_id, created_at)
            SELECT gen_random_uuid(), NEW.account_id, 'balance.depleted',
                   jsonb_build_object('account', b.public_id::text, 'threshold_credits', 0,
                                      'balance_credits', after, 'previous_balance_credits', before,
                                      'ledger_entry', NEW.id, 'reason', NEW.reason),
                   NEW.id, now()
              FROM accounts_billingaccount b WHERE b.id = NEW.account_id;
        END IF;
    ELSIF after > before THEN
        INSERT INTO notifications_billingevent (public_id, account_id, type, data, ledger_entry_id, created_at)
        SELECT gen_random_uuid(), NEW.account_id, 'balance.recovered',
               jsonb_build_object('account', b.public_id::text, 'threshold_credits', t.threshold,
                                  'balance_credits', after, 'previous_balance_credits', before,
                                  'ledger_entry', NEW.id, 'reason', NEW.reason),
               NEW.id, now()
          FROM (SELECT 0::bigint AS threshold WHERE before <= 0 AND after > 0
                   AND (SELECT e.type FROM notifications_billingevent e
                         WHERE e.account_id = NEW.account_id
                           AND e.type IN ('balance.depleted', 'balance.recovered')
                           AND e.data->>'threshold_credits' = '0'
                         ORDER BY e.id DESC LIMIT 1) = 'balance.depleted'
                UNION ALL
                SELECT threshold_credits FROM notifications_balancealert
                 WHERE account_id = NEW.account_id AND threshold_credits > before AND threshold_credits <= after) t
          JOIN accounts_billingaccount b ON b.id = NEW.account_id
         ORDER BY t.threshold;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_balance_events AFTER INSERT ON accounts_creditledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_balance_events();
