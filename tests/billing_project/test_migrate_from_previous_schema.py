"""A database built by the previous main (before payers/ and holds/ became apps) migrates to this layout.

The previous main is taken from git (`git archive`), its own migrations build a database and its own
`billing_demo` fills it (accounts, a gateway key, aliases, a grant, a month of usage through the real ingest
path), plus a team, a run and an open hold. Then this checkout's migrations run on it, and this checkout's
code must find every row where it was, bill one more call end to end, and reconcile the books to zero.
"""

import io
import json
import secrets
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.gunicorn_server import django_database_url, service_env
from tests.paths import REPO_ROOT

# The last main before the apps moved (issue 16); its schema is "the previous schema".
PREVIOUS_MAIN = "240560f"

PREVIOUS_SEED = """
from decimal import Decimal
from accounts.models import BillingAccount
from accounts.hold_services import authorize_call
from accounts.payer_services import run_binding_create, team_binding_create, api_key_binding_create
account = BillingAccount.objects.get(name="Demo account")
team_binding_create(account=account, team_id="team-previous")
run_binding_create(account=account, run_id="run/previous")
api_key_binding_create(account=account, key_hash="a" * 64, label="previous key")
authorize_call(litellm_call_id="previous-open-hold", estimated_cost_usd=Decimal("0.0021"), key_hash="a" * 64)
"""

COUNTS = """
import json
from django.db import connection
tables = ["accounts_billingaccount", "accounts_creditledgerentry", "accounts_apikeybinding", "accounts_teambinding",
          "accounts_runbinding", "accounts_enduseralias", "accounts_credithold", "receipts_chargereceipt",
          "receipts_deferredusage", "invoices_ledgerdailysummary"]
with connection.cursor() as cursor:
    counts = {}
    for table in tables:
        cursor.execute(f"SELECT count(*) FROM {table}")
        counts[table] = cursor.fetchone()[0]
    cursor.execute("SELECT sum(balance_credits), sum(held_credits) FROM accounts_billingaccount")
    counts["balances"], counts["held"] = [int(v or 0) for v in cursor.fetchone()]
print(json.dumps(counts))
"""

CURRENT_CHECKS = """
import json
from decimal import Decimal
from django.contrib.contenttypes.models import ContentType
from holds.models import CreditHold
from holds.services import authorize_call
from payers.models import ApiKeyBinding, EndUserAlias, RunBinding, TeamBinding
from payers.selectors import resolve_payer
from tests.books import ingest_records
from tests.factories import litellm_record
key = ApiKeyBinding.objects.get(key_hash="a" * 64)
hold = CreditHold.objects.get(litellm_call_id="previous-open-hold")
decision = authorize_call(litellm_call_id="current-call", estimated_cost_usd=Decimal("0.0013"), key_hash="a" * 64)
record = litellm_record(call_id="current-call", cost=Decimal("0.0011"), end_user="")
record["metadata"]["user_api_key_hash"] = "a" * 64
result = ingest_records(records=[record])
print(json.dumps({
    "key_account": key.account.name,
    "team": resolve_payer(team_id="team-previous").source,
    "run": RunBinding.objects.filter(run_id="run/previous").exists(),
    "aliases": EndUserAlias.objects.count(),
    "open_hold": hold.status,
    "authorized": decision.allowed,
    "billed": result.processed,
    "settled": CreditHold.objects.get(litellm_call_id="current-call").status,
    "content_types": sorted(
        f"{c.app_label}.{c.model}" for c in ContentType.objects.filter(
            model__in=["apikeybinding", "teambinding", "runbinding", "enduseralias", "credithold"]
        )
    ),
}))
"""


@pytest.fixture
def scratch_database() -> Iterator[str]:
    """A new, empty database on the test server (dropped afterwards)."""
    url = django_database_url()
    name = f"previous_{secrets.token_hex(4)}"
    parts = urlsplit(url)
    admin = urlunsplit(parts._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(parts._replace(path=f"/{name}"))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _previous_checkout(into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(REPO_ROOT), "archive", "--format=tar", PREVIOUS_MAIN],
        capture_output=True,
        check=False,
    )
    assert archive.returncode == 0, (
        f"git archive {PREVIOUS_MAIN} failed: {archive.stderr.decode()[:300]} "
        "(this test needs the repository's history: clone without --depth)"
    )
    with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
        tar.extractall(into, filter="data")
    return into


def _manage(cwd: Path, database: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=cwd,
        env=service_env(database, DEBUG="true", PYTHONPATH=str(cwd)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, f"manage.py {' '.join(args)[:80]} in {cwd} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def test_a_database_of_the_previous_main_migrates_and_its_books_still_tie(
    scratch_database: str, tmp_path: Path
) -> None:
    previous = _previous_checkout(tmp_path / "previous")
    _manage(previous, scratch_database, "migrate", "--no-input", "-v", "0")
    _manage(previous, scratch_database, "billing_demo")
    _manage(previous, scratch_database, "shell", "-c", PREVIOUS_SEED)
    before = json.loads(_manage(previous, scratch_database, "shell", "-c", COUNTS).strip().splitlines()[-1])
    assert before["receipts_chargereceipt"] > 0 and before["held"] > 0

    migrated = _manage(REPO_ROOT, scratch_database, "migrate", "--no-input", "-v", "1")
    assert "accounts.0007_payers_and_holds_moved" in migrated
    after = json.loads(_manage(REPO_ROOT, scratch_database, "shell", "-c", COUNTS).strip().splitlines()[-1])
    assert after == before  # nothing moved, nothing lost

    checks = json.loads(_manage(REPO_ROOT, scratch_database, "shell", "-c", CURRENT_CHECKS).strip().splitlines()[-1])
    assert checks == {
        "key_account": "Demo account",
        "team": "team",
        "run": True,
        "aliases": checks["aliases"],
        "open_hold": "held",
        "authorized": True,
        "billed": 1,
        "settled": "settled",
        "content_types": [
            "holds.credithold",
            "payers.apikeybinding",
            "payers.enduseralias",
            "payers.runbinding",
            "payers.teambinding",
        ],
    }
    assert checks["aliases"] >= 1

    # The whole demo month and today, inside the books only (no LiteLLM here).
    since = (date.today() - timedelta(days=62)).isoformat()
    until = (date.today() + timedelta(days=1)).isoformat()
    report = json.loads(
        _manage(REPO_ROOT, scratch_database, "reconcile", "--books-only", "--json", "--since", since, "--until", until)
    )
    assert report["outcome"] == "clean", report
    assert set(report["discrepancies"]) >= {"balance_drift", "held_drift", "orphan_usage", "summary_drift"}
    assert all(found == [] for found in report["discrepancies"].values()), report["discrepancies"]
