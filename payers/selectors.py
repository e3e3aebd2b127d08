"""Who pays: the one resolver (SERVER_DERIVES_IDENTITY), from what LiteLLM logged about the caller."""

from collections.abc import Sequence
from dataclasses import dataclass

from django.conf import settings
from django.db import connection

from payers.models import ApiKeyBinding, EndUserAlias, PayerSource, RunBinding, TeamBinding


@dataclass(frozen=True)
class PayerQuery:
    """What LiteLLM logged about the caller of one record; "" when absent.

    key_hash: the hash the proxy logged for the caller's key; team_id: the key's team; end_user: the
    record's end user; run_id: the run the caller named, only when it named one (not the call-id fallback).
    integrations.litellm.records reads them from LiteLLM's payload.
    """

    key_hash: str = ""
    team_id: str = ""
    end_user: str = ""
    run_id: str = ""


@dataclass(frozen=True)
class PayerDecision:
    account_id: int
    source: PayerSource


def run_id_from_end_user(end_user: str) -> str:
    """The run id of an executor's `end_user = "{run_id}/{attempt}"`, or "".

    Split at the LAST "/" and require digits after it, so run ids may contain "/".
    """
    run_id, slash, attempt = end_user.rpartition("/")
    if not slash or not run_id or not attempt.isascii() or not attempt.isdigit():
        return ""
    return run_id


def _run_candidates(query: PayerQuery) -> list[str]:
    candidates = [query.run_id] if query.run_id else []
    from_end_user = run_id_from_end_user(query.end_user)
    if from_end_user and from_end_user not in candidates:
        candidates.append(from_end_user)
    return candidates


def resolve_payers(*, queries: Sequence[PayerQuery]) -> list[PayerDecision | None]:
    """The paying account of each query, in order; None means unknown payer (defer it).

    1. the key's binding, unless it is a gateway key;
    2. the team's binding;
    3. only for a gateway key, or with BILLING_TRUST_END_USER: the registered run
       (metadata run_id, else the run of an end user "{run_id}/{attempt}"),
       then the end user's alias.
    A caller can name any run or end user it likes, so those never decide the payer
    of a record from an ordinary key. One query per batch, whatever its size (_bindings); runs and
    end users are looked up for every query but decide only where trusted (_decide).
    """
    found = _bindings(
        key_hashes={q.key_hash for q in queries if q.key_hash},
        team_ids={q.team_id for q in queries if q.team_id},
        run_ids={r for q in queries for r in _run_candidates(q)},
        end_users={q.end_user for q in queries if q.end_user},
    )
    keys = {value: (account_id, is_gateway) for kind, value, account_id, is_gateway in found if kind == "key"}
    teams = {value: account_id for kind, value, account_id, _ in found if kind == "team"}
    runs = {value: account_id for kind, value, account_id, _ in found if kind == "run"}
    aliases = {value: account_id for kind, value, account_id, _ in found if kind == "end_user"}
    trust_all = bool(settings.BILLING_TRUST_END_USER)

    def trusted(q: PayerQuery) -> bool:
        return trust_all or keys.get(q.key_hash, (0, False))[1]

    decisions: list[PayerDecision | None] = []
    for q in queries:
        decisions.append(_decide(q, keys=keys, teams=teams, runs=runs, aliases=aliases, trusted=trusted(q)))
    return decisions


def _bindings(
    *, key_hashes: set[str], team_ids: set[str], run_ids: set[str], end_users: set[str]
) -> list[tuple[str, str, int, bool]]:
    """(kind, value, account_id, is_gateway) of every binding of these values, in one round trip."""
    parts: list[str] = []
    params: list[list[str]] = []
    for kind, model, column, values in (
        ("key", ApiKeyBinding, "key_hash", key_hashes),
        ("team", TeamBinding, "team_id", team_ids),
        ("run", RunBinding, "run_id", run_ids),
        ("end_user", EndUserAlias, "end_user", end_users),
    ):
        # PostgreSQL text cannot hold NUL, so no binding has one: such a value matches nothing (and is not sent).
        values = {value for value in values if "\x00" not in value}
        if values:
            gateway = "is_gateway" if model is ApiKeyBinding else "false"
            parts.append(
                f"SELECT '{kind}', {column}, account_id, {gateway} FROM {model._meta.db_table} WHERE {column} = ANY(%s)"
            )
            params.append(sorted(values))
    if not parts:
        return []
    with connection.cursor() as cursor:
        cursor.execute(" UNION ALL ".join(parts), params)
        return cursor.fetchall()


def _decide(
    q: PayerQuery,
    *,
    keys: dict[str, tuple[int, bool]],
    teams: dict[str, int],
    runs: dict[str, int],
    aliases: dict[str, int],
    trusted: bool,
) -> PayerDecision | None:
    key = keys.get(q.key_hash) if q.key_hash else None
    if key is not None and not key[1]:
        return PayerDecision(account_id=key[0], source=PayerSource.KEY)
    if q.team_id and q.team_id in teams:
        return PayerDecision(account_id=teams[q.team_id], source=PayerSource.TEAM)
    if not trusted:
        return None
    for run_id in _run_candidates(q):
        if run_id in runs:
            return PayerDecision(account_id=runs[run_id], source=PayerSource.RUN)
    if q.end_user and q.end_user in aliases:
        return PayerDecision(account_id=aliases[q.end_user], source=PayerSource.END_USER)
    return None


def resolve_payer(
    *, key_hash: str = "", team_id: str = "", end_user: str = "", run_id: str = ""
) -> PayerDecision | None:
    """resolve_payers() for one record."""
    query = PayerQuery(key_hash=key_hash, team_id=team_id, end_user=end_user, run_id=run_id)
    return resolve_payers(queries=[query])[0]
