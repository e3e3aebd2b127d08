"""Who pays (issue 10, SERVER_DERIVES_IDENTITY): bindings, the one resolver, the key hash, their services."""

import hashlib
import json
import subprocess
from typing import Any

import pytest
from django.db import IntegrityError, connection, transaction

from integrations.litellm.keys import LITELLM_MASTER_KEY_HASH, litellm_key_hash, storable_key_hash
from payers.exceptions import BindingConflict, InvalidBinding
from payers.models import ApiKeyBinding, EndUserAlias, PayerSource, RunBinding, TeamBinding
from payers.selectors import PayerDecision, PayerQuery, resolve_payer, resolve_payers, run_id_from_end_user
from payers.services import (
    api_key_binding_create,
    end_user_alias_bind,
    end_user_alias_create,
    run_binding_create,
    team_binding_create,
)
from payers.signals import payer_binding_created
from tests.accounts.test_ledger import _run_threads
from tests.factories import (
    ApiKeyBindingFactory,
    BillingAccountFactory,
    EndUserAliasFactory,
    RunBindingFactory,
    TeamBindingFactory,
)
from tests.paths import REPO_ROOT

ROOT = REPO_ROOT
LITELLM_PYTHON = ROOT / ".venv-litellm" / "bin" / "python"

pytestmark = pytest.mark.django_db


# --- the key hash, against the installed LiteLLM ---------------------------------------------

KEYS = [
    "sk-1234",
    "sk-" + "a" * 48,
    "Bearer sk-tenant-a",
    "bearer sk-tenant-a",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig",
    "not-a-virtual-key",
    "sk-ünïcode",
]

_LITELLM_PROBE = """
import json, sys
from litellm.constants import LITELLM_PROXY_MASTER_KEY_ALIAS
from litellm.proxy._types import UserAPIKeyAuth
from litellm.proxy.litellm_pre_call_utils import LiteLLMProxyRequestSetup
from litellm.proxy.utils import hash_token
keys = json.loads(sys.stdin.read())
print(json.dumps({
    "master": LITELLM_PROXY_MASTER_KEY_ALIAS,
    "hash_token": {k: hash_token(k) for k in keys},
    "logged": {k: LiteLLMProxyRequestSetup.get_logged_api_key(UserAPIKeyAuth(api_key=k)) for k in keys},
}))
"""


@pytest.fixture(scope="module")
def litellm_hashes() -> dict[str, Any]:
    """What the pinned LiteLLM itself computes and logs for KEYS (its own code, in its own virtualenv)."""
    result = subprocess.run(
        [str(LITELLM_PYTHON), "-c", _LITELLM_PROBE],
        input=json.dumps(KEYS),
        capture_output=True,
        text=True,
        timeout=120,
        env={"LITELLM_LOCAL_MODEL_COST_MAP": "True", "PATH": "/usr/bin:/bin"},
        check=True,
    )
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.django_db(databases=[])
@pytest.mark.parametrize("key", KEYS)
def test_key_hash_is_what_litellm_logs(litellm_hashes: dict[str, Any], key: str) -> None:
    assert litellm_key_hash(key) == litellm_hashes["logged"][key]


@pytest.mark.django_db(databases=[])
def test_sk_keys_are_litellm_hash_token_and_the_master_key_is_its_literal(litellm_hashes: dict[str, Any]) -> None:
    assert (
        litellm_key_hash("sk-1234") == litellm_hashes["hash_token"]["sk-1234"] == hashlib.sha256(b"sk-1234").hexdigest()
    )
    assert litellm_hashes["master"] == LITELLM_MASTER_KEY_HASH == "litellm_proxy_master_key"
    assert litellm_key_hash("sk-master", master_key="sk-master") == LITELLM_MASTER_KEY_HASH
    assert litellm_key_hash("Bearer sk-master", master_key="sk-master") == LITELLM_MASTER_KEY_HASH
    assert litellm_key_hash("sk-other", master_key="sk-master") == hashlib.sha256(b"sk-other").hexdigest()
    # A key LiteLLM logs unhashed must never be stored from a raw key.
    assert storable_key_hash("not-a-virtual-key") is None
    assert storable_key_hash("sk-x") == hashlib.sha256(b"sk-x").hexdigest()


# --- the resolver -----------------------------------------------------------------------------


def _h(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


@pytest.fixture
def world() -> dict[str, Any]:
    """Tenant A and B, each with its own key; B has an alias and a run; a gateway key G of account Gw."""
    a, b, gw = BillingAccountFactory(name="A"), BillingAccountFactory(name="B"), BillingAccountFactory(name="Gw")
    ApiKeyBindingFactory(account=a, key_hash=_h("sk-a"))
    ApiKeyBindingFactory(account=b, key_hash=_h("sk-b"))
    ApiKeyBindingFactory(account=gw, key_hash=_h("sk-gateway"), is_gateway=True)
    EndUserAliasFactory(account=b, end_user="bob")
    RunBindingFactory(account=b, run_id="run-42")
    RunBindingFactory(account=b, run_id="org/team/run-7")
    return {"a": a, "b": b, "gw": gw}


def _pay(**kwargs: str) -> PayerDecision | None:
    return resolve_payer(**kwargs)


def test_a_bound_key_pays_whatever_alias_or_run_it_names(world: dict[str, Any]) -> None:
    a = world["a"].pk
    expected = PayerDecision(account_id=a, source=PayerSource.KEY)
    assert _pay(key_hash=_h("sk-a")) == expected
    assert _pay(key_hash=_h("sk-a"), end_user="bob") == expected
    assert _pay(key_hash=_h("sk-a"), end_user="run-42/0") == expected
    assert _pay(key_hash=_h("sk-a"), run_id="run-42") == expected


def test_an_unbound_key_naming_another_tenants_alias_or_run_is_unknown(world: dict[str, Any]) -> None:
    stranger = _h("sk-stranger")
    assert _pay(key_hash=stranger, end_user="bob") is None
    assert _pay(key_hash=stranger, end_user="run-42/0") is None
    assert _pay(key_hash=stranger, run_id="run-42") is None
    assert _pay(end_user="bob") is None  # no key logged at all


def test_a_gateway_key_bills_the_alias_or_run_it_names(world: dict[str, Any]) -> None:
    b, g = world["b"].pk, _h("sk-gateway")
    assert _pay(key_hash=g, end_user="bob") == PayerDecision(account_id=b, source=PayerSource.END_USER)
    assert _pay(key_hash=g, end_user="run-42/0") == PayerDecision(account_id=b, source=PayerSource.RUN)
    assert _pay(key_hash=g, end_user="run-42/17") == PayerDecision(account_id=b, source=PayerSource.RUN)
    assert _pay(key_hash=g, run_id="run-42", end_user="someone") == PayerDecision(account_id=b, source=PayerSource.RUN)
    # The gateway's own account never pays for a user it could not name.
    assert _pay(key_hash=g, end_user="nobody") is None
    assert _pay(key_hash=g) is None


def test_run_ids_may_contain_slashes_and_the_attempt_is_digits_after_the_last_one(world: dict[str, Any]) -> None:
    b, g = world["b"].pk, _h("sk-gateway")
    assert run_id_from_end_user("org/team/run-7/3") == "org/team/run-7"
    assert run_id_from_end_user("run-42/0") == "run-42"
    for not_a_run in ("run-42", "run-42/", "/0", "run-42/x", "run-42/1a", "run-42/٣"):
        assert run_id_from_end_user(not_a_run) == "", not_a_run
    assert _pay(key_hash=g, end_user="org/team/run-7/3") == PayerDecision(account_id=b, source=PayerSource.RUN)
    assert _pay(key_hash=g, run_id="org/team/run-7") == PayerDecision(account_id=b, source=PayerSource.RUN)
    assert _pay(key_hash=g, end_user="org/team/run-7") is None  # no attempt: not a run, and no such alias


def test_a_run_wins_over_an_alias_and_metadata_run_id_over_end_user(world: dict[str, Any]) -> None:
    g, b = _h("sk-gateway"), world["b"].pk
    other = BillingAccountFactory()
    EndUserAliasFactory(account=other, end_user="run-42/0")
    RunBindingFactory(account=other, run_id="run-other")
    assert _pay(key_hash=g, end_user="run-42/0") == PayerDecision(account_id=b, source=PayerSource.RUN)
    assert _pay(key_hash=g, end_user="run-42/0", run_id="run-other") == PayerDecision(
        account_id=other.pk, source=PayerSource.RUN
    )
    # An unregistered metadata run id falls through to the end user's run.
    assert _pay(key_hash=g, end_user="run-42/0", run_id="unregistered") == PayerDecision(
        account_id=b, source=PayerSource.RUN
    )


def test_team_binding(world: dict[str, Any]) -> None:
    team_account = BillingAccountFactory()
    TeamBindingFactory(account=team_account, team_id="team-x")
    team = PayerDecision(account_id=team_account.pk, source=PayerSource.TEAM)
    assert _pay(key_hash=_h("sk-unbound"), team_id="team-x", end_user="bob") == team
    assert _pay(team_id="team-x") == team
    # An ordinary key binding comes first; a gateway key's team comes before its end users.
    assert _pay(key_hash=_h("sk-a"), team_id="team-x") == PayerDecision(account_id=world["a"].pk, source="key")
    assert _pay(key_hash=_h("sk-gateway"), team_id="team-x", end_user="bob") == team
    assert _pay(key_hash=_h("sk-unbound"), team_id="team-unbound") is None


def test_trusting_end_users_is_off_by_default_and_opens_aliases_and_runs(world: dict[str, Any], settings: Any) -> None:
    stranger, b = _h("sk-stranger"), world["b"].pk
    assert settings.BILLING_TRUST_END_USER is False
    assert _pay(key_hash=stranger, end_user="bob") is None
    settings.BILLING_TRUST_END_USER = True
    assert _pay(key_hash=stranger, end_user="bob") == PayerDecision(account_id=b, source=PayerSource.END_USER)
    assert _pay(end_user="run-42/0") == PayerDecision(account_id=b, source=PayerSource.RUN)
    # A bound key still pays for itself.
    assert _pay(key_hash=_h("sk-a"), end_user="bob") == PayerDecision(account_id=world["a"].pk, source="key")


def test_a_batch_resolves_in_one_query(world: dict[str, Any], django_assert_max_num_queries: Any) -> None:
    team_account = BillingAccountFactory()
    TeamBindingFactory(account=team_account, team_id="team-x")
    shapes = [
        (PayerQuery(key_hash=_h("sk-a"), end_user="bob"), (world["a"].pk, "key")),
        (PayerQuery(key_hash=_h("sk-gateway"), end_user="bob"), (world["b"].pk, "end_user")),
        (PayerQuery(key_hash=_h("sk-gateway"), end_user="run-42/1"), (world["b"].pk, "run")),
        (PayerQuery(key_hash=_h("sk-stranger"), end_user="bob"), None),
        (PayerQuery(team_id="team-x"), (team_account.pk, "team")),
        (PayerQuery(), None),
    ]
    queries = [shapes[i % len(shapes)][0] for i in range(512)]
    with django_assert_max_num_queries(1):
        decisions = resolve_payers(queries=queries)
    for i, decision in enumerate(decisions):
        expected = shapes[i % len(shapes)][1]
        assert (decision and (decision.account_id, decision.source)) == expected or (decision is expected is None)
    with django_assert_max_num_queries(0):
        assert resolve_payers(queries=[]) == []
        # A value PostgreSQL text cannot hold (NUL) matches no binding: it is not even sent.
        assert resolve_payers(queries=[PayerQuery(key_hash="sk\x00a", end_user="bob\x00")]) == [None]


# --- services -------------------------------------------------------------------------------


@pytest.fixture
def announced() -> Any:
    got: list[dict[str, Any]] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        got.append({k: kwargs[k] for k in ("kind", "value", "account_id")})

    payer_binding_created.connect(receiver, weak=False)
    yield got
    payer_binding_created.disconnect(receiver)


def test_bindings_are_idempotent_conflicts_name_the_field_and_creation_is_announced_after_commit(
    announced: list[dict[str, Any]], django_capture_on_commit_callbacks: Any
) -> None:
    a, b = BillingAccountFactory(), BillingAccountFactory()
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        key = api_key_binding_create(account=a, raw_key="sk-tenant-a", label="prod")
        team = team_binding_create(account=a, team_id="team-a")
        run = run_binding_create(account=a, run_id="run/with/slashes")
        alias = end_user_alias_bind(account=a, end_user="alice")
        assert announced == []  # nothing before the commit
    assert len(callbacks) == 4
    assert all(r.created for r in (key, team, run, alias))
    assert key.binding.key_hash == _h("sk-tenant-a")
    assert announced == [
        {"kind": "key", "value": _h("sk-tenant-a"), "account_id": a.pk},
        {"kind": "team", "value": "team-a", "account_id": a.pk},
        {"kind": "run", "value": "run/with/slashes", "account_id": a.pk},
        {"kind": "end_user", "value": "alice", "account_id": a.pk},
    ]

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        again = [
            api_key_binding_create(account=a, key_hash=_h("sk-tenant-a")),
            team_binding_create(account=a, team_id="team-a"),
            run_binding_create(account=a, run_id="run/with/slashes"),
            end_user_alias_bind(account=a, end_user="alice"),
        ]
        assert end_user_alias_create(account=a, end_user="alice").pk == alias.binding.pk
    assert callbacks == [] and len(announced) == 4
    assert [r.created for r in again] == [False] * 4
    assert [r.binding.pk for r in again] == [r.binding.pk for r in (key, team, run, alias)]

    for call, field in [
        (lambda: api_key_binding_create(account=b, raw_key="sk-tenant-a"), "key_hash"),
        (lambda: api_key_binding_create(account=a, raw_key="sk-tenant-a", is_gateway=True), "is_gateway"),
        (lambda: team_binding_create(account=b, team_id="team-a"), "team_id"),
        (lambda: run_binding_create(account=b, run_id="run/with/slashes"), "run_id"),
        (lambda: end_user_alias_bind(account=b, end_user="alice"), "end_user"),
        (lambda: end_user_alias_create(account=b, end_user="alice"), "end_user"),
    ]:
        with pytest.raises(BindingConflict) as conflict:
            call()
        assert conflict.value.field == field
    assert ApiKeyBinding.objects.get().account == a
    assert ApiKeyBinding.objects.get().is_gateway is False


def test_a_raw_key_is_never_stored(django_capture_on_commit_callbacks: Any) -> None:
    account = BillingAccountFactory()
    raw = "sk-secret-never-stored-1234"
    api_key_binding_create(account=account, raw_key=raw)
    with connection.cursor() as cursor:
        cursor.execute("SELECT key_hash, label FROM accounts_apikeybinding")
        rows = cursor.fetchall()
    assert rows == [(_h(raw), "")]
    with pytest.raises(InvalidBinding) as refused:
        api_key_binding_create(account=account, raw_key="plain-secret")  # LiteLLM would log it as is
    assert refused.value.field == "raw_key"
    with pytest.raises(InvalidBinding):
        api_key_binding_create(account=account, raw_key="sk-x", key_hash=_h("sk-x"))
    assert not ApiKeyBinding.objects.filter(key_hash="plain-secret").exists()


def test_the_master_key_binds_as_its_logged_literal(settings: Any) -> None:
    settings.LITELLM_MASTER_KEY = "sk-master-of-the-proxy"
    result = api_key_binding_create(
        account=BillingAccountFactory(), raw_key=settings.LITELLM_MASTER_KEY, is_gateway=True
    )
    assert result.binding.key_hash == "litellm_proxy_master_key"
    assert resolve_payer(key_hash="litellm_proxy_master_key") is None  # gateway: its users decide


@pytest.mark.parametrize("run_id", ["", "x" * 256, "run\x00", "run\n1", "run\x85"])
def test_bad_run_ids_are_refused(run_id: str) -> None:
    with pytest.raises(InvalidBinding) as refused:
        run_binding_create(account=BillingAccountFactory(), run_id=run_id)
    assert refused.value.field == "run_id"
    assert not RunBinding.objects.exists()


def test_run_ids_of_any_printable_text_up_to_255_are_accepted() -> None:
    account = BillingAccountFactory()
    for run_id in ("x" * 255, "run 42 / ünïcode ✓", "a/b/c/0", "run-42?x=1&y=2"):
        assert run_binding_create(account=account, run_id=run_id).created


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO accounts_apikeybinding (key_hash, account_id, is_gateway, label, created_at)"
        " SELECT '', id, false, '', now() FROM accounts_billingaccount",
        "INSERT INTO accounts_teambinding (team_id, account_id, label, created_at)"
        " SELECT '', id, '', now() FROM accounts_billingaccount",
        "INSERT INTO accounts_runbinding (run_id, account_id, created_at)"
        " SELECT '', id, now() FROM accounts_billingaccount",
        "INSERT INTO accounts_runbinding (run_id, account_id, created_at)"
        " SELECT E'run\\t1', id, now() FROM accounts_billingaccount",
        "INSERT INTO accounts_teambinding (team_id, account_id, label, created_at)"
        " SELECT 'team-a', id, '', now() FROM accounts_billingaccount",
    ],
    ids=["empty-key", "empty-team", "empty-run", "control-char-run", "one-team-two-accounts"],
)
def test_database_refuses_empty_and_duplicate_bindings(sql: str) -> None:
    BillingAccountFactory()
    BillingAccountFactory()
    TeamBindingFactory(team_id="team-a")
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)


# --- concurrency: real connections, released together ----------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("kind", ["key", "team", "run", "end_user"])
def test_concurrent_creation_of_one_binding_makes_one_row(kind: str) -> None:
    account = BillingAccountFactory()
    create = {
        "key": lambda: api_key_binding_create(account=account, raw_key="sk-race", is_gateway=True),
        "team": lambda: team_binding_create(account=account, team_id="team-race"),
        "run": lambda: run_binding_create(account=account, run_id="run-race/1"),
        "end_user": lambda: end_user_alias_bind(account=account, end_user="racer"),
    }[kind]
    model = {"key": ApiKeyBinding, "team": TeamBinding, "run": RunBinding, "end_user": EndUserAlias}[kind]
    announced: list[str] = []

    def receiver(sender: Any, **kwargs: Any) -> None:
        announced.append(kwargs["value"])

    payer_binding_created.connect(receiver, weak=False)
    results = []
    try:
        assert _run_threads(8, lambda i: results.append(create())) == []
    finally:
        payer_binding_created.disconnect(receiver)
    assert len(results) == 8
    assert sum(r.created for r in results) == 1
    assert len({r.binding.pk for r in results}) == 1
    assert model.objects.count() == 1
    assert len(announced) == 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_binding_of_one_run_to_two_accounts_gives_one_winner_and_conflicts() -> None:
    accounts = [BillingAccountFactory(), BillingAccountFactory()]
    outcomes: list[str] = []

    def work(i: int) -> None:
        try:
            run_binding_create(account=accounts[i % 2], run_id="contested")
            outcomes.append(f"bound-{i % 2}")
        except BindingConflict as exc:
            assert exc.field == "run_id"
            outcomes.append("conflict")

    assert _run_threads(8, work) == []
    winner = RunBinding.objects.get(run_id="contested").account
    won = f"bound-{accounts.index(winner)}"
    assert sorted(set(outcomes)) == sorted({won, "conflict"})
    assert outcomes.count(won) == 4 and outcomes.count("conflict") == 4
