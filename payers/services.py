"""Writes of payer bindings: API keys, teams, registered runs and end-user aliases (who pays).

Each binding service is idempotent (same value, same account → the existing row,
created=False), refuses a value bound to another account (BindingConflict naming
the field), survives concurrent creation (the unique index decides; the loser
reads the winner's row) and, once its transaction commits, sends
payer_binding_created so the records deferred for want of that payer are replayed.
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import IntegrityError, transaction

from accounts.models import BillingAccount
from billing_project.text_rules import control_character_problem
from integrations.litellm.keys import storable_key_hash
from payers.exceptions import BindingConflict, InvalidBinding
from payers.models import BINDING_VALUE_MAX_LENGTH, ApiKeyBinding, EndUserAlias, PayerSource, RunBinding, TeamBinding
from payers.signals import payer_binding_created

logger = logging.getLogger(__name__)

B = TypeVar("B", ApiKeyBinding, TeamBinding, RunBinding, EndUserAlias)


@dataclass(frozen=True)
class BindingResult(Generic[B]):
    binding: B
    created: bool


def _clean_value(value: object, *, field: str) -> str:
    if not isinstance(value, str) or not value:
        raise InvalidBinding(f"{field} must be a non-empty string", field=field)
    if len(value) > BINDING_VALUE_MAX_LENGTH:
        raise InvalidBinding(f"{field} must be at most {BINDING_VALUE_MAX_LENGTH} characters", field=field)
    problem = control_character_problem(value)
    if problem:
        raise InvalidBinding(f"{field} {problem}", field=field)
    return value


def _announce(*, sender: type, kind: PayerSource, value: str, account_id: int) -> None:
    """Send payer_binding_created after commit; a failing receiver never undoes the binding."""

    def send() -> None:
        for receiver, result in payer_binding_created.send_robust(
            sender=sender, kind=kind.value, value=value, account_id=account_id
        ):
            if isinstance(result, Exception):
                logger.error(
                    "payer_binding_created receiver %r failed for %s %r", receiver, kind.value, value, exc_info=result
                )

    transaction.on_commit(send)


def _bind(
    model: type[B],
    *,
    kind: PayerSource,
    field: str,
    value: str,
    account: BillingAccount,
    defaults: dict[str, Any] | None = None,
    differs: Callable[[B], str | None] = lambda existing: None,
) -> BindingResult[B]:
    existing = model.objects.filter(**{field: value}).first()
    if existing is None:
        try:
            with transaction.atomic():
                binding = model.objects.create(**{field: value}, account=account, **(defaults or {}))
        except IntegrityError:
            # A concurrent creation won the unique index: its row is committed and visible now.
            existing = model.objects.filter(**{field: value}).first()
            if existing is None:
                raise
        else:
            _announce(sender=model, kind=kind, value=value, account_id=account.pk)
            return BindingResult(binding=binding, created=True)
    if existing.account_id != account.pk:
        raise BindingConflict(f"{field} {value!r} is already bound to another billing account", field=field)
    other_field = differs(existing)
    if other_field is not None:
        raise BindingConflict(f"{field} {value!r} is already bound with another {other_field}", field=other_field)
    return BindingResult(binding=existing, created=False)


@transaction.atomic
def api_key_binding_create(
    *,
    account: BillingAccount,
    key_hash: str | None = None,
    raw_key: str | None = None,
    is_gateway: bool = False,
    label: str = "",
    created_by: AbstractBaseUser | None = None,
) -> BindingResult[ApiKeyBinding]:
    """Bind a LiteLLM key (by its logged hash, or a raw key hashed here and never stored) to an account.

    Replaying with another `is_gateway` is a conflict: trusting a key's end users is not changed by a replay.
    """
    if (key_hash is None) == (raw_key is None):
        raise InvalidBinding("give exactly one of key_hash and raw_key", field="key_hash")
    if raw_key is not None:
        raw = _clean_value(raw_key, field="raw_key")
        hashed = storable_key_hash(raw, master_key=settings.LITELLM_MASTER_KEY)
        if hashed is None:
            # LiteLLM logs such keys unhashed: storing them would store a secret.
            raise InvalidBinding("raw_key must be a LiteLLM sk- key or the proxy's master key", field="raw_key")
        value = hashed
    else:
        value = _clean_value(key_hash, field="key_hash")
    return _bind(
        ApiKeyBinding,
        kind=PayerSource.KEY,
        field="key_hash",
        value=value,
        account=account,
        defaults={
            "is_gateway": is_gateway,
            "label": label,
            "created_by": created_by if created_by is not None and created_by.is_authenticated else None,
        },
        differs=lambda existing: "is_gateway" if existing.is_gateway != is_gateway else None,
    )


@transaction.atomic
def team_binding_create(*, account: BillingAccount, team_id: str, label: str = "") -> BindingResult[TeamBinding]:
    """Bind a LiteLLM team id to an account."""
    value = _clean_value(team_id, field="team_id")
    return _bind(
        TeamBinding, kind=PayerSource.TEAM, field="team_id", value=value, account=account, defaults={"label": label}
    )


@transaction.atomic
def run_binding_create(*, account: BillingAccount, run_id: str) -> BindingResult[RunBinding]:
    """Register an external-executor run: all its attempts bill to `account`."""
    value = _clean_value(run_id, field="run_id")
    return _bind(RunBinding, kind=PayerSource.RUN, field="run_id", value=value, account=account)


@transaction.atomic
def end_user_alias_bind(*, account: BillingAccount, end_user: str) -> BindingResult[EndUserAlias]:
    """Bind a LiteLLM end user to an account (honoured for gateway keys, or with BILLING_TRUST_END_USER)."""
    value = _clean_value(end_user, field="end_user")
    return _bind(EndUserAlias, kind=PayerSource.END_USER, field="end_user", value=value, account=account)


@transaction.atomic
def payer_binding_create(
    *,
    kind: str,
    account: BillingAccount,
    value: str | None = None,
    raw_key: str | None = None,
    is_gateway: bool = False,
    label: str = "",
    created_by: AbstractBaseUser | None = None,
) -> BindingResult[ApiKeyBinding] | BindingResult[TeamBinding] | BindingResult[EndUserAlias]:
    """One entry point for the bindings API: a key (by hash or raw key), a team or an end-user alias."""
    if kind == PayerSource.KEY:
        return api_key_binding_create(
            account=account,
            key_hash=value,
            raw_key=raw_key,
            is_gateway=is_gateway,
            label=label,
            created_by=created_by,
        )
    if raw_key is not None:
        raise InvalidBinding("api_key is only for kind 'key'", field="raw_key")
    if is_gateway:
        raise InvalidBinding("only a key can be a gateway key", field="is_gateway")
    if kind == PayerSource.TEAM:
        return team_binding_create(account=account, team_id=value or "", label=label)
    if kind == PayerSource.END_USER:
        return end_user_alias_bind(account=account, end_user=value or "")
    raise InvalidBinding(f"kind must be one of key, team, end_user, got {kind!r}", field="kind")


def end_user_alias_create(*, account: BillingAccount, end_user: str) -> EndUserAlias:
    """Map a LiteLLM end user to an account (idempotent); payer_binding_created replays what waited for it."""
    return end_user_alias_bind(account=account, end_user=end_user).binding
