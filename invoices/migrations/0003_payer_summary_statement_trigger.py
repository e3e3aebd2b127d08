"""The invoice summaries, kept by one statement-level trigger on the ledger.

Triggers (all in SQL below, each with its reverse):

- `ledger_summarise_statement` (AFTER INSERT ... FOR EACH STATEMENT on
  accounts_creditledgerentry, `REFERENCING NEW TABLE AS new_entries`, function
  `billing_ledger_summarise_statement()`): once per INSERT statement, groups the
  statement's new entries joined once to their receipts and upserts (one SQL statement)
  - invoices_ledgerdailysummary: one row per (account, UTC day, reason, model group),
  - invoices_ledgerpayersummary: one row per (account, UTC day, API key hash, end user),
    usage entries only (the receipt's key, alias and end user),
  in sorted key order. A 512-entry batch costs one upsert per group instead of one
  per entry. It replaces the row-level `ledger_summarise` of migration 0002
  (same numbers; the reverse puts the row-level trigger back).
- `summary_guard` (0002) and `payer_summary_guard` (here), BEFORE INSERT OR UPDATE
  OR DELETE on each summary, function `billing_summary_guard()`: only the ledger
  trigger (trigger depth ≥ 2) may write a summary; a direct write is refused.

Existing ledger rows are summarised into the new payer summary here, under a
SHARE lock on the ledger, so no entry lands between the backfill and the trigger.
"""

import django.db.models.deletion
from django.db import migrations, models

# Migration 0002's row-level trigger: what the reverse restores (and bench/invoice.py compares against).
ROW_TRIGGER = r"""
CREATE FUNCTION billing_ledger_summarise() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r receipts_chargereceipt%ROWTYPE;
BEGIN
    IF NEW.receipt_id IS NOT NULL THEN
        SELECT * INTO r FROM receipts_chargereceipt WHERE id = NEW.receipt_id;
    END IF;
    INSERT INTO invoices_ledgerdailysummary AS s
        (account_id, day, reason, model_group, entries, amount_credits,
         prompt_tokens, completion_tokens, total_tokens, cost_usd)
    VALUES
        (NEW.account_id, (NEW.created_at AT TIME ZONE 'UTC')::date, NEW.reason, COALESCE(r.model_group, ''), 1,
         NEW.amount_credits, COALESCE(r.prompt_tokens, 0), COALESCE(r.completion_tokens, 0),
         COALESCE(r.total_tokens, 0), COALESCE(r.cost_usd, 0))
    ON CONFLICT (account_id, day, reason, model_group) DO UPDATE SET
        entries = s.entries + 1,
        amount_credits = s.amount_credits + EXCLUDED.amount_credits,
        prompt_tokens = s.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = s.completion_tokens + EXCLUDED.completion_tokens,
        total_tokens = s.total_tokens + EXCLUDED.total_tokens,
        cost_usd = s.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_summarise AFTER INSERT ON accounts_creditledgerentry
    FOR EACH ROW EXECUTE FUNCTION billing_ledger_summarise();
"""

# The payer summary's rows for usage entries `e` carrying their receipt's columns (shared by the
# trigger and the backfill; reconciliation/sql/summary_drift.sql recomputes the same sums).
PAYER_SUMS = r"""
    SELECT e.account_id, (e.created_at AT TIME ZONE 'UTC')::date, e.api_key_hash, e.end_user,
           max(e.api_key_alias), count(*), sum(e.amount_credits), sum(e.prompt_tokens),
           sum(e.completion_tokens), sum(e.total_tokens), sum(e.cost_usd)
"""

STATEMENT_TRIGGER = rf"""
CREATE FUNCTION billing_ledger_summarise_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- One statement: the new entries are joined to their receipts once (`e`, materialised because
    -- both summaries read it), then each summary gets one upsert per group, in key order.
    WITH e AS MATERIALIZED (
        SELECT n.account_id, n.created_at, n.reason, n.amount_credits, n.receipt_id, r.model_group,
               r.api_key_hash, r.api_key_alias, r.end_user, r.prompt_tokens, r.completion_tokens,
               r.total_tokens, r.cost_usd
          FROM new_entries n
          LEFT JOIN receipts_chargereceipt r ON r.id = n.receipt_id
    ), daily AS (
        INSERT INTO invoices_ledgerdailysummary AS s
            (account_id, day, reason, model_group, entries, amount_credits,
             prompt_tokens, completion_tokens, total_tokens, cost_usd)
        SELECT e.account_id, (e.created_at AT TIME ZONE 'UTC')::date, e.reason, COALESCE(e.model_group, ''),
               count(*), sum(e.amount_credits), COALESCE(sum(e.prompt_tokens), 0),
               COALESCE(sum(e.completion_tokens), 0), COALESCE(sum(e.total_tokens), 0),
               COALESCE(sum(e.cost_usd), 0)
          FROM e
         GROUP BY 1, 2, 3, 4
         ORDER BY 1, 2, 3, 4
        ON CONFLICT (account_id, day, reason, model_group) DO UPDATE SET
            entries = s.entries + EXCLUDED.entries,
            amount_credits = s.amount_credits + EXCLUDED.amount_credits,
            prompt_tokens = s.prompt_tokens + EXCLUDED.prompt_tokens,
            completion_tokens = s.completion_tokens + EXCLUDED.completion_tokens,
            total_tokens = s.total_tokens + EXCLUDED.total_tokens,
            cost_usd = s.cost_usd + EXCLUDED.cost_usd
    )
    INSERT INTO invoices_ledgerpayersummary AS p
        (account_id, day, api_key_hash, end_user, api_key_alias, entries, amount_credits,
         prompt_tokens, completion_tokens, total_tokens, cost_usd)
    {PAYER_SUMS}
      FROM e
     WHERE e.receipt_id IS NOT NULL
     GROUP BY 1, 2, 3, 4
     ORDER BY 1, 2, 3, 4
    ON CONFLICT (account_id, day, api_key_hash, end_user) DO UPDATE SET
        api_key_alias = GREATEST(p.api_key_alias, EXCLUDED.api_key_alias),
        entries = p.entries + EXCLUDED.entries,
        amount_credits = p.amount_credits + EXCLUDED.amount_credits,
        prompt_tokens = p.prompt_tokens + EXCLUDED.prompt_tokens,
        completion_tokens = p.completion_tokens + EXCLUDED.completion_tokens,
        total_tokens = p.total_tokens + EXCLUDED.total_tokens,
        cost_usd = p.cost_usd + EXCLUDED.cost_usd;
    RETURN NULL;
END
$$;

CREATE TRIGGER ledger_summarise_statement AFTER INSERT ON accounts_creditledgerentry
    REFERENCING NEW TABLE AS new_entries
    FOR EACH STATEMENT EXECUTE FUNCTION billing_ledger_summarise_statement();
"""

GUARD_0002 = r"""
CREATE OR REPLACE FUNCTION billing_summary_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION 'invoices_ledgerdailysummary is written only by the ledger trigger: % refused', TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;
"""

FORWARD = rf"""
-- No ledger INSERT between the backfill below and the new trigger (released at commit).
LOCK TABLE accounts_creditledgerentry IN SHARE MODE;

DROP TRIGGER ledger_summarise ON accounts_creditledgerentry;
DROP FUNCTION billing_ledger_summarise();
{STATEMENT_TRIGGER}

INSERT INTO invoices_ledgerpayersummary
    (account_id, day, api_key_hash, end_user, api_key_alias, entries, amount_credits,
     prompt_tokens, completion_tokens, total_tokens, cost_usd)
{PAYER_SUMS}
  FROM (SELECT l.account_id, l.created_at, l.amount_credits, r.api_key_hash, r.api_key_alias, r.end_user,
               r.prompt_tokens, r.completion_tokens, r.total_tokens, r.cost_usd
          FROM accounts_creditledgerentry l
          JOIN receipts_chargereceipt r ON r.id = l.receipt_id) AS e
 GROUP BY 1, 2, 3, 4;

-- Only the ledger trigger (depth 2) may write a summary; the message names the table refused.
CREATE OR REPLACE FUNCTION billing_summary_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() < 2 THEN
        RAISE EXCEPTION '% is written only by the ledger trigger: % refused', TG_TABLE_NAME, TG_OP
            USING ERRCODE = 'restrict_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END
$$;

CREATE TRIGGER payer_summary_guard BEFORE INSERT OR UPDATE OR DELETE ON invoices_ledgerpayersummary
    FOR EACH ROW EXECUTE FUNCTION billing_summary_guard();
"""

REVERSE = rf"""
DROP TRIGGER payer_summary_guard ON invoices_ledgerpayersummary;
{GUARD_0002}
DROP TRIGGER ledger_summarise_statement ON accounts_creditledgerentry;
DROP FUNCTION billing_ledger_summarise_statement();
{ROW_TRIGGER}
"""


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_payer_bindings"),
        ("invoices", "0002_summary_trigger"),
        ("receipts", "0005_payer_source"),
    ]

    operations = [
        migrations.CreateModel(
            name="LedgerPayerSummary",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("day", models.DateField()),
                ("api_key_hash", models.CharField(blank=True, default="", max_length=255)),
                ("end_user", models.CharField(blank=True, default="", max_length=255)),
                ("api_key_alias", models.CharField(blank=True, default="", max_length=255)),
                ("entries", models.BigIntegerField(default=0)),
                ("amount_credits", models.BigIntegerField(default=0)),
                ("prompt_tokens", models.BigIntegerField(default=0)),
                ("completion_tokens", models.BigIntegerField(default=0)),
                ("total_tokens", models.BigIntegerField(default=0)),
                ("cost_usd", models.DecimalField(decimal_places=30, default=0, max_digits=54)),
                (
                    "account",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="+", to="accounts.billingaccount"
                    ),
                ),
            ],
            options={
                "verbose_name_plural": "ledger payer summaries",
                "constraints": [
                    models.UniqueConstraint(
                        fields=("account", "day", "api_key_hash", "end_user"), name="payer_summary_unique_bucket"
                    )
                ],
            },
        ),
        migrations.RunSQL(FORWARD, REVERSE),
    ]
