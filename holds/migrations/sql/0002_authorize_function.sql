-- billing_authorize_hold(): one pre-call authorization decided in one statement (issue 19).
--
-- holds.services._decide() calls it once, in autocommit: the statement is its own transaction, so a new call's
-- authorize costs one round trip instead of BEGIN, lock, expiry, INSERT and COMMIT. The rules are those of
-- HOLDS_NEVER_OVERSPEND, under the paying account's row lock:
--   * a call id that already has a hold is answered 'exists' (Python replays it or refuses it: _replay());
--   * the account row is locked FOR UPDATE; with p_wait_ms, waiting for it is bounded by a transaction-local
--     lock_timeout (SQLSTATE 55P03 reaches the caller), and a lock obtained after p_wait_ms answers 'too_late'
--     and holds nothing (the caller stopped listening);
--   * the account's holds past their expiry are expired first (the sweep may lag: billing_credithold_held_total
--     takes them off held_credits), expired_holds says how many;
--   * available = balance_credits - held_credits; p_required above it answers 'refused' ('exists' when a
--     concurrent authorize of the same call took its hold meanwhile);
--   * else the hold is inserted (the trigger adds it to held_credits) and 'held' returns it, with available
--     after it. A racing authorize of the same call id meets the unique index: ON CONFLICT answers 'exists'.
-- Nothing here sets session state: lock_timeout is set with is_local and put back, so PgBouncer's
-- transaction pooling is safe.

CREATE FUNCTION billing_authorize_hold(
    p_account_id bigint,
    p_call_id text,
    p_required bigint,
    p_estimate numeric,
    p_model text,
    p_payer_source text,
    p_now timestamptz,
    p_ttl_seconds integer,
    p_wait_ms integer,
    OUT outcome text,
    OUT available bigint,
    OUT hold_pk bigint,
    OUT hold_id uuid,
    OUT expires_at timestamptz,
    OUT expired_holds integer
) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_balance bigint;
    v_held bigint;
    v_freed bigint;
    v_deadline timestamptz;
    v_lock_timeout text;
BEGIN
    -- A replay needs no lock: a hold, once taken, keeps its estimate and its account.
    PERFORM 1 FROM accounts_credithold h WHERE h.litellm_call_id = p_call_id;
    IF FOUND THEN
        outcome := 'exists';
        RETURN;
    END IF;
    IF p_wait_ms IS NOT NULL THEN
        v_deadline := clock_timestamp() + make_interval(secs => p_wait_ms / 1000.0);
        v_lock_timeout := current_setting('lock_timeout');
        PERFORM set_config('lock_timeout', p_wait_ms || 'ms', true);
    END IF;
    SELECT a.balance_credits, a.held_credits INTO v_balance, v_held
      FROM accounts_billingaccount a WHERE a.id = p_account_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'billing account % does not exist', p_account_id USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF p_wait_ms IS NOT NULL THEN
        PERFORM set_config('lock_timeout', v_lock_timeout, true);
        IF clock_timestamp() >= v_deadline THEN
            outcome := 'too_late';
            RETURN;
        END IF;
    END IF;
    WITH freed AS (
        UPDATE accounts_credithold h SET status = 'expired', closed_at = p_now
         WHERE h.account_id = p_account_id AND h.status = 'held' AND h.expires_at <= p_now
        RETURNING h.held_credits
    )
    SELECT count(*), coalesce(sum(freed.held_credits), 0) INTO expired_holds, v_freed FROM freed;
    available := v_balance - (v_held - v_freed);
    IF p_required > available THEN
        PERFORM 1 FROM accounts_credithold h WHERE h.litellm_call_id = p_call_id;
        outcome := CASE WHEN FOUND THEN 'exists' ELSE 'refused' END;
        RETURN;
    END IF;
    INSERT INTO accounts_credithold AS h (
        hold_id, account_id, litellm_call_id, model, payer_source, estimated_cost_usd, held_credits, status,
        expires_at, created_at
    ) VALUES (
        gen_random_uuid(), p_account_id, p_call_id, p_model, p_payer_source, p_estimate, p_required, 'held',
        p_now + make_interval(secs => p_ttl_seconds), p_now
    )
    ON CONFLICT (litellm_call_id) DO NOTHING
    RETURNING h.id, h.hold_id, h.expires_at INTO hold_pk, hold_id, expires_at;
    IF NOT FOUND THEN
        outcome := 'exists';
        RETURN;
    END IF;
    outcome := 'held';
    available := available - p_required;
END
$$;
