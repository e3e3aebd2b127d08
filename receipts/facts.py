"""The billing facts of one call, in the service's own terms, whatever system reported it.

A UsageFact is a record judged valid (integrations.litellm.records judges LiteLLM's); a NotBillable says why a
record produced no bill now. Deferrals keep a fact as plain JSON (fact_to_json).
"""

import hashlib
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

SOURCE_SYSTEM = "litellm"
# Between a call's source reference and the fingerprint of a second call that reused its call id.
REUSED_CALL_SEPARATOR = "~"


@dataclass(frozen=True)
class UsageFact:
    """A usage record judged valid: ready for commit_usage_facts() once its cost is known.

    `cost_usd` is None only inside a deferral (LiteLLM did not know the cost).
    The origin says where it came from: a delivery and position, or a spend-log row.
    """

    litellm_call_id: str
    request_id: str
    run_id: str
    attempt: int
    end_user: str
    cost_usd: Decimal | None
    status: str
    model_group: str
    model: str
    provider: str
    call_type: str
    stream: bool
    cache_hit: bool
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    zero_cost_suspect: bool
    api_key_hash: str
    api_key_alias: str
    team_id: str
    started_at: datetime | None
    ended_at: datetime | None
    explicit_run_id: str = ""
    # The cost is the call's hold estimate, not LiteLLM's (BILLING_UNPRICED_CALLS=charge_hold).
    provisional_cost: bool = False
    cost_breakdown: dict[str, Any] | None = None
    ingest_batch_id: int | None = None
    batch_position: int | None = None
    spend_log_request_id: str = ""

    @property
    def source_reference(self) -> str:
        return source_reference(run_id=self.run_id, attempt=self.attempt, litellm_call_id=self.litellm_call_id)

    @property
    def reused_call_reference(self) -> str:
        """The reference of this call when another call already holds its call id (A_SERVED_CALL_IS_BILLED).

        Clients can choose call ids (a request header), so two calls can share one. The second is billed under
        "{source_reference}~{fingerprint}": stable, so its own re-delivery is still a duplicate.
        """
        identity = "\x1f".join(
            (
                self.request_id,
                self.api_key_hash,
                str(self.prompt_tokens),
                str(self.completion_tokens),
                str(self.cost_usd),
            )
        )
        return f"{self.source_reference}{REUSED_CALL_SEPARATOR}{hashlib.sha256(identity.encode()).hexdigest()[:16]}"

    def is_same_call(self, *, request_id: str, api_key_hash: str, prompt_tokens: int, completion_tokens: int) -> bool:
        """Whether a receipt or deferral of this call id (with these values) records this very call.

        Compared on what a re-delivery, a late callback and a spend-log backfill all carry alike: the
        response id (when both have a real one), the key, the tokens. A different call (another response,
        key or token count) under the same call id is a new charge, never a duplicate.
        """
        ids = {self.request_id, request_id} - {"", self.litellm_call_id}
        return (
            len(ids) <= 1
            and (not self.api_key_hash or not api_key_hash or self.api_key_hash == api_key_hash)
            and self.prompt_tokens == prompt_tokens
            and self.completion_tokens == completion_tokens
        )


@dataclass(frozen=True)
class NotBillable:
    """A record that produced no bill now. `kind` says what to do with it.

    kind: "deferred" (keep and retry: unknown cost or payer; `fact` has all but that),
          "invalid" (keep for staff: fails validation; `field` names what is wrong),
          "skipped" (nothing to bill: a failed call with no cost).
    """

    kind: str
    reason: str
    detail: str
    litellm_call_id: str = ""
    field: str = ""
    fact: UsageFact | None = None
    ingest_batch_id: int | None = None
    batch_position: int | None = None

    @property
    def source_reference(self) -> str | None:
        return self.fact.source_reference if self.fact is not None else None


def source_reference(*, run_id: str, attempt: int, litellm_call_id: str) -> str:
    """The idempotency key of a charge: "{run_id}/{attempt}/{litellm_call_id}".

    Unambiguous read from the right: a call id never contains "/" and the
    attempt is digits, so a run id may contain any printable character.
    """
    return f"{run_id}/{attempt}/{litellm_call_id}"


# --- a fact kept with a deferral (DeferredUsage.fact): plain JSON, every value already judged ---

_FACT_VERSION = 1


def fact_to_json(fact: UsageFact) -> dict[str, Any]:
    return {
        "version": _FACT_VERSION,
        **{
            name: (
                str(value)
                if isinstance(value, Decimal)
                else value.isoformat()
                if isinstance(value, datetime)
                else value
            )
            for name, value in fact.__dict__.items()
        },
    }


def fact_from_json(data: dict[str, Any]) -> UsageFact:
    values = {k: v for k, v in data.items() if k != "version"}
    for name in ("started_at", "ended_at"):
        if values.get(name):
            values[name] = datetime.fromisoformat(values[name])
    if values.get("cost_usd") is not None:
        values["cost_usd"] = Decimal(values["cost_usd"])
    return UsageFact(**values)


def is_fact_json(data: Any) -> bool:
    return isinstance(data, dict) and data.get("version") == _FACT_VERSION
