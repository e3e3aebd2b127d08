"""Hostile ingest bodies built as JSON TEXT, and the accounting contract every ingest answer must keep.

Hostile numbers (1e200000, NaN, 5,000-digit integers) and lone surrogates
("\\ud800") cannot go through json.dumps, so a record is serialised with
placeholder strings that are then replaced by raw JSON text.

The contract (issue 8) is checked only through public surfaces: the HTTP
answer, the models and `manage.py reconcile --books-only`.
"""

import copy
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from io import StringIO
from typing import Any

from django.core.management import call_command
from django.db.models import Count, Q, Sum
from django.utils import timezone

from accounts.models import BillingAccount, CreditLedgerEntry
from billing_project.exactjson import dumps_exact
from receipts.models import ChargeReceipt, DeferredUsage
from tests.factories import FIXTURES, litellm_record, load_sample

INGEST = "/api/internal/billing/ingest"
# Skips that have nothing to bill and nothing to keep (a failed call without a cost).
NOTHING_TO_BILL_PREFIX = "failure_"

Path = tuple[str | int, ...]


def _placeholder() -> str:
    return f"@@RAW-{uuid.uuid4().hex}@@"


def record_text(record: Mapping[str, Any], raw: Mapping[Path, str] | None = None) -> str:
    """`record` as JSON text, with the value at each path replaced by the raw JSON text given.

    A path that does not exist yet is created (missing dicts on the way are added).
    """
    record = copy.deepcopy(dict(record))
    marks: dict[str, str] = {}
    for path, text in (raw or {}).items():
        target: Any = record
        for key in path[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}  # a missing or non-object step becomes an object
            target = target[key]
        mark = _placeholder()
        target[path[-1]] = mark
        marks[mark] = text
    body = dumps_exact(record)
    for mark, text in marks.items():
        body = body.replace(json.dumps(mark), text)
    return body


def array_body(texts: Sequence[str]) -> bytes:
    return ("[" + ",".join(texts) + "]").encode("utf-8", "surrogatepass")


def ndjson_body(texts: Sequence[str]) -> bytes:
    return "\n".join(texts).encode("utf-8", "surrogatepass")


def nested(depth: int) -> str:
    """JSON text of `depth` nested arrays."""
    return "[" * depth + "]" * depth


@dataclass
class Sent:
    """One record of a batch as the test sent it, and what the test demands of it."""

    text: str
    call_id: str | None  # the call id as sent (None when the record has none or it is not a string)
    expect: str = "any"  # "billed", "kept" or "any" (either, but exactly one of them)
    label: str = ""  # what was done to it, for failure reports

    def __repr__(self) -> str:
        return f"Sent({self.expect}, call_id={self.call_id!r:.40}, {len(self.text)} chars, {self.label or 'sample'})"


def valid(**kwargs: Any) -> Sent:
    """A real LiteLLM 1.108 record (end user acct-alice by default) that must be billed."""
    record = litellm_record(**kwargs)
    return Sent(text=dumps_exact(record), call_id=record["litellm_call_id"], expect="billed")


def hostile(raw: Mapping[Path, str] | None = None, *, expect: str = "kept", **kwargs: Any) -> Sent:
    """A real record with raw JSON text at the given paths; by default it must be kept, not billed."""
    record = litellm_record(**kwargs)
    call_id = record["litellm_call_id"]
    if raw and ("litellm_call_id",) in raw:
        try:
            value = json.loads(raw[("litellm_call_id",)])
        except (ValueError, RecursionError):
            value = None
        call_id = value if isinstance(value, str) else None
    return Sent(text=record_text(record, raw), call_id=call_id, expect=expect)


@dataclass
class Snapshot:
    deferred_rows: int
    receipts: int

    @classmethod
    def take(cls) -> "Snapshot":
        return cls(deferred_rows=DeferredUsage.objects.count(), receipts=ChargeReceipt.objects.count())


@dataclass
class Verdict:
    body: dict[str, Any]
    listed: dict[int, dict[str, Any]] = field(default_factory=dict)

    def entry_text(self, index: int) -> str:
        return json.dumps(self.listed.get(index, {}), ensure_ascii=True)


def _pg_safe(text: str) -> bool:
    """Whether a string can be a query parameter at all (PostgreSQL text has no NUL; UTF-8 has no surrogates)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def check_accounting(response: Any, sent: Sequence[Sent], before: Snapshot, *, new_rows: bool = True) -> Verdict:
    """Assert issue 8's contract for one ingest answer; returns the parsed answer.

    200; for every record index exactly one of billed (receipt + exactly one
    usage debit, counted as processed/duplicate) or listed with its index and
    a reason; one new DeferredUsage row per kept record (when `new_rows`);
    the books tie.
    """
    assert response.status_code == 200, (
        f"ingest answered {response.status_code} (must be 200 for record-level problems): "
        f"{getattr(response, 'content', b'')[:500]!r}"
    )
    body = response.json()
    verdict = Verdict(body=body)
    for key in ("skipped_records", "deferred_records"):
        for entry in body[key]:
            assert "index" in entry, f"{key} entry without its record index: {entry}"
            assert entry.get("reason"), f"{key} entry without a reason: {entry}"
            index = entry["index"]
            assert isinstance(index, int) and 0 <= index < len(sent), f"{key} entry with a bad index: {entry}"
            assert index not in verdict.listed, f"record {index} listed twice: {verdict.listed[index]} and {entry}"
            verdict.listed[index] = entry
    billed_indexes = [i for i in range(len(sent)) if i not in verdict.listed]
    assert body["processed"] + body["duplicates"] == len(billed_indexes), (
        f"processed+duplicates={body['processed'] + body['duplicates']} but {len(billed_indexes)} records "
        f"are not listed as skipped/deferred: {body}"
    )
    for index, item in enumerate(sent):
        if item.expect == "billed":
            assert index not in verdict.listed, f"valid record {index} was not billed: {verdict.listed[index]}"
        elif item.expect == "kept":
            assert index in verdict.listed, f"hostile record {index} was billed instead of kept: {body}"
    for index in billed_indexes:
        call_id = sent[index].call_id
        assert isinstance(call_id, str) and _pg_safe(call_id), (
            f"record {index} counted as billed although its call id cannot be stored: {call_id!r:.80}"
        )
        receipts = list(
            ChargeReceipt.objects.filter(litellm_call_id=call_id).annotate(
                debits=Count("ledger_entry", filter=Q(ledger_entry__reason=CreditLedgerEntry.Reason.USAGE))
            )
        )
        assert receipts, f"record {index} counted as billed but no receipt has call id {call_id!r:.80}"
        for receipt in receipts:
            ref = receipt.source_reference
            assert receipt.debits == 1, f"receipt {ref!r:.60} (len {len(ref)}) has {receipt.debits} usage debits"
    if new_rows:
        kept = sum(1 for e in verdict.listed.values() if not str(e["reason"]).startswith(NOTHING_TO_BILL_PREFIX))
        gained = DeferredUsage.objects.count() - before.deferred_rows
        assert gained == kept, f"DeferredUsage gained {gained} rows for {kept} kept records: {body}"
    assert_books_tie()
    return verdict


def assert_books_tie() -> None:
    """Every receipt has exactly one debit of its credits; debits sum to receipts; balances equal ledger sums."""
    without = ChargeReceipt.objects.annotate(
        debits=Count("ledger_entry", filter=Q(ledger_entry__reason=CreditLedgerEntry.Reason.USAGE))
    ).exclude(debits=1)
    bad = list(without.values_list("source_reference", "debits")[:5])
    assert not bad, f"receipts without exactly one usage debit: {bad}"
    debits = CreditLedgerEntry.objects.filter(reason=CreditLedgerEntry.Reason.USAGE).aggregate(s=Sum("amount_credits"))
    charged = ChargeReceipt.objects.aggregate(s=Sum("charged_credits"))
    assert -(debits["s"] or 0) == (charged["s"] or 0), f"usage debits {debits['s']} != receipts {charged['s']}"
    for account in BillingAccount.objects.all():
        ledger = CreditLedgerEntry.objects.filter(account=account).aggregate(s=Sum("amount_credits"))["s"] or 0
        assert account.balance_credits == ledger, f"{account}: balance {account.balance_credits} != ledger {ledger}"


def reconcile_books_only() -> tuple[int, str]:
    """`manage.py reconcile --books-only` over a window around now: (exit status, output)."""
    today = timezone.now().date()
    out, err = StringIO(), StringIO()
    try:
        call_command(
            "reconcile",
            "--books-only",
            "--since",
            (today - timedelta(days=2)).isoformat(),
            "--until",
            (today + timedelta(days=2)).isoformat(),
            stdout=out,
            stderr=err,
        )
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, out.getvalue() + err.getvalue()


def post(client: Any, body: bytes, content_type: str = "application/json") -> Any:
    return client.post(INGEST, body, content_type=content_type)


def ingest_and_check(client: Any, sent: Sequence[Sent], *, ndjson: bool = False, new_rows: bool = True) -> Verdict:
    before = Snapshot.take()
    texts = [s.text for s in sent]
    body = ndjson_body(texts) if ndjson else array_body(texts)
    response = post(client, body, "application/x-ndjson" if ndjson else "application/json")
    return check_accounting(response, sent, before, new_rows=new_rows)


def names_field(verdict: Verdict, index: int, *fields: str) -> bool:
    """Whether the listed entry of `index` (or the kept DeferredUsage row) names one of `fields`."""
    text = verdict.entry_text(index)
    details = " ".join(DeferredUsage.objects.values_list("detail", flat=True).order_by("-id")[:50])
    return any(f in text or f in details for f in fields)


# --- the mutation vocabulary of the fuzzers (tests/receipts/test_fuzz_ingest.py, bench/fuzz_ingest.py) ------------

SAMPLES = [FIXTURES / "litellm-1.108-json-array-batch.json", FIXTURES / "litellm-1.108-failure-embedding-stream.json"]
END_USERS = ("acct-alice", "acct-bob", "acct-carol")


def _templates() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(billable records: success with a cost, every record of every sample)."""
    everything = [r for path in SAMPLES for r in load_sample(path)]
    billable = [r for r in everything if r.get("status") == "success" and r.get("response_cost") is not None]
    return billable, everything


BILLABLE_TEMPLATES, ALL_TEMPLATES = _templates()

# Where to mutate: every top-level field of the samples, every metadata field, and the nested fields billing reads.
MUTATION_PATHS: list[Path] = sorted(
    {(k,) for r in ALL_TEMPLATES for k in r}
    | {("metadata", k) for r in ALL_TEMPLATES for k in r.get("metadata") or {}}
    | {
        ("metadata", "spend_logs_metadata", "run_id"),
        ("metadata", "spend_logs_metadata", "attempt"),
        ("metadata", "requester_custom_headers", "x-litellm-end-user-id"),
        ("model_map_information", "model_map_value", "input_cost_per_token"),
        ("model_map_information", "model_map_value", "output_cost_per_token"),
    },
    key=repr,
)
# The fields billing reads: mutated more often than the rest.
HOT_PATHS: list[Path] = [
    ("litellm_call_id",),
    ("id",),
    ("end_user",),
    ("response_cost",),
    ("response_cost_failure_debug_info",),
    ("prompt_tokens",),
    ("completion_tokens",),
    ("total_tokens",),
    ("status",),
    ("model",),
    ("model_group",),
    ("custom_llm_provider",),
    ("call_type",),
    ("stream",),
    ("cache_hit",),
    ("startTime",),
    ("endTime",),
    ("metadata",),
    ("metadata", "user_api_key_hash"),
    ("metadata", "user_api_key_alias"),
    ("metadata", "user_api_key_team_id"),
    ("metadata", "user_api_key_end_user_id"),
    ("metadata", "spend_logs_metadata"),
    ("metadata", "spend_logs_metadata", "run_id"),
    ("metadata", "spend_logs_metadata", "attempt"),
    ("model_map_information", "model_map_value", "input_cost_per_token"),
]

# Raw JSON text of hostile values. Strings get a per-use suffix (see hostile_value) so that two
# mutated records of one batch never share a call id by accident.
HOSTILE_NUMBERS = [
    "-1",
    "-0",
    "0",
    "1.5",
    "-1e-7",
    "1e-200000",
    "1e13",
    "10000000000000",
    "1e18",
    "1e19",
    str(2**31),
    str(2**63 - 1),
    str(2**63),
    str(-(2**63) - 1),
    "1" + "0" * 5000,  # over Python's 4,300-digit int limit
    "1e100000",
    "1e200000",
    "-1e200000",
    "1E+131072",
    "NaN",
    "Infinity",
    "-Infinity",
]
# Slow on unbounded parsers (22-60 s each on the defect): only in the long run.
SLOW_NUMBERS = ["1e1000000", "1e2000000"]
HOSTILE_SHAPES = ["null", "true", "false", "[]", "{}", '[{"a": null}]', '{"run_id": "x", "attempt": "²"}']
STRING_KINDS = [
    "nul",
    "surrogate",
    "low_surrogate",
    "superscript",
    "slash",
    "long_255",
    "long_256",
    "long_600",
    "empty",
    "unicode",
]


def hostile_string(kind: str, suffix: str) -> str:
    """Raw JSON text of a hostile string (escapes kept as JSON escapes, e.g. \\ud800)."""
    body = {
        "nul": "a\\u0000b",
        "surrogate": "\\ud800x",
        "low_surrogate": "x\\udfff",
        "superscript": "²",
        "slash": "run/x",
        "long_255": "L" * (255 - len(suffix)),
        "long_256": "L" * (256 - len(suffix)),
        "long_600": "L" * 600,
        "empty": "",
        "unicode": "ü€😀",
    }[kind]
    return f'"{body}{suffix}"' if kind != "empty" else '""'


def nested_value(depth: int) -> str:
    return nested(depth)


def fresh_record(template: dict[str, Any], *, end_user: str) -> dict[str, Any]:
    """A copy of a sample record with a fresh call id and response id, billed to `end_user`."""
    record = copy.deepcopy(template)
    record["litellm_call_id"] = str(uuid.uuid4())
    record["id"] = f"chatcmpl-{uuid.uuid4()}"
    record["end_user"] = end_user
    if isinstance(record.get("metadata"), dict):
        record["metadata"]["user_api_key_end_user_id"] = end_user
    return record


def valid_from(template: dict[str, Any], *, end_user: str) -> Sent:
    record = fresh_record(template, end_user=end_user)
    return Sent(text=dumps_exact(record), call_id=record["litellm_call_id"], expect="billed")


def mutated_from(template: dict[str, Any], *, end_user: str, mutations: Mapping[Path, str]) -> Sent:
    """A sample record with raw JSON text at some paths; it may be billed or kept (expect "any")."""
    record = fresh_record(template, end_user=end_user)
    call_id: str | None = record["litellm_call_id"]
    if any(path[0] == "litellm_call_id" for path in mutations):
        try:
            value = json.loads(mutations[("litellm_call_id",)])
        except (ValueError, RecursionError, KeyError):
            value = None
        call_id = value if isinstance(value, str) else None
    label = "; ".join(f"{'.'.join(map(str, p))}={t[:40]!r}" for p, t in mutations.items())
    return Sent(text=record_text(record, mutations), call_id=call_id, expect="any", label=label)


def whole_record_replacement(text: str) -> Sent:
    """A record that is not an object at all (or not JSON): must be kept as invalid."""
    return Sent(text=text, call_id=None, expect="kept", label=f"whole record {text[:40]!r}")
