"""factory_boy factories and a builder of LiteLLM records shaped like the real samples."""

import copy
import hashlib
import json
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import factory
from django.contrib.auth import get_user_model

from accounts.models import BillingAccount
from billing_project.exactjson import dumps_exact, loads_exact
from payers.models import ApiKeyBinding, EndUserAlias, RunBinding, TeamBinding

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SAMPLE_BATCH = FIXTURES / "litellm-1.108-json-array-batch.json"
SAMPLE_FAILURE_EMBEDDING_STREAM = FIXTURES / "litellm-1.108-failure-embedding-stream.json"


def load_sample(path: Path) -> list[dict[str, Any]]:
    return loads_exact(path.read_text())


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", "correct-horse-battery")

    @factory.post_generation
    def _save(obj, create, extracted, **kwargs):
        if create:
            obj.save()


class BillingAccountFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = BillingAccount

    name = factory.Sequence(lambda n: f"Account {n}")
    owner = factory.SubFactory(UserFactory)


# How LiteLLM logs its master key in `metadata.user_api_key_hash` (the real samples were sent with it).
MASTER_KEY_HASH = "litellm_proxy_master_key"


def bind_trusted_gateway(*, key_hash: str = MASTER_KEY_HASH) -> ApiKeyBinding:
    """The samples' topology: a trusted gateway holds the key and names its own users, so the records it
    sends bill the end user's alias (or the registered run). Without this binding an alias decides nothing."""
    binding = ApiKeyBinding.objects.filter(key_hash=key_hash).first()
    if binding is None:
        binding = ApiKeyBinding.objects.create(
            key_hash=key_hash,
            is_gateway=True,
            label="trusted gateway",
            account=BillingAccountFactory(name="Gateway operator"),
        )
    return binding


class EndUserAliasFactory(factory.django.DjangoModelFactory):
    """An end-user alias, and the trusted gateway whose records it decides."""

    class Meta:
        model = EndUserAlias
        skip_postgeneration_save = True

    end_user = factory.Sequence(lambda n: f"end-user-{n}")
    account = factory.SubFactory(BillingAccountFactory)

    @factory.post_generation
    def _gateway(obj, create, extracted, **kwargs):
        if create:
            bind_trusted_gateway()


class ApiKeyBindingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = ApiKeyBinding

    key_hash = factory.Sequence(lambda n: hashlib.sha256(f"sk-test-{n}".encode()).hexdigest())
    account = factory.SubFactory(BillingAccountFactory)
    is_gateway = False


class TeamBindingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = TeamBinding

    team_id = factory.Sequence(lambda n: f"team-{n}")
    account = factory.SubFactory(BillingAccountFactory)


class RunBindingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RunBinding

    run_id = factory.Sequence(lambda n: f"run-{n}")
    account = factory.SubFactory(BillingAccountFactory)


_TEMPLATE = load_sample(SAMPLE_BATCH)[0]


def litellm_record(
    *,
    end_user: str = "acct-alice",
    cost: Decimal | int | str | None = Decimal("0.0000135"),
    call_id: str | None = None,
    run_id: str | None = None,
    attempt: int | None = None,
    **overrides: Any,
) -> dict[str, Any]:
    """A StandardLoggingPayload like LiteLLM 1.108 sends (from the real sample), with a fresh call id.

    cost="missing" removes `response_cost` entirely.
    """
    record = copy.deepcopy(_TEMPLATE)
    call_id = call_id or str(uuid.uuid4())
    record["litellm_call_id"] = call_id
    record["id"] = f"chatcmpl-{uuid.uuid4()}"
    record["end_user"] = end_user
    record["metadata"]["user_api_key_end_user_id"] = end_user
    if cost == "missing":
        del record["response_cost"]
    else:
        record["response_cost"] = cost
    if run_id is not None or attempt is not None:
        record["metadata"]["spend_logs_metadata"] = {"run_id": run_id, "attempt": attempt}
    record.update(overrides)
    return record


def to_body(records: Any) -> bytes:
    """JSON text exactly as LiteLLM would send it (Decimals as JSON numbers)."""
    return dumps_exact(records).encode()


def to_ndjson(records: list[Any]) -> bytes:
    return "\n".join(dumps_exact(r) for r in records).encode()


__all__ = ["json"]
