"""Property: whatever a batch holds, valid records are billed once, bad ones are kept, the books tie.

The real LiteLLM 1.108 samples are mutated field by field (types, lengths,
NUL, surrogates, huge/negative/NaN/Infinity numbers written as raw JSON text,
deep nesting) and mixed with valid records in JSON-array and NDJSON bodies.
Every answer is checked against the accounting contract (tests/hostile.py).

Profiles: the default run is quick (60 examples). For a long run:

    FUZZ_INGEST_PROFILE=long FUZZ_INGEST_EXAMPLES=5000 .venv/bin/python -m pytest tests/receipts/test_fuzz_ingest.py

(the long profile also tries the 1e1000000/1e2000000 numbers that stalled workers for 22-60 s).
"""

import os

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from tests.hostile import (
    ALL_TEMPLATES,
    BILLABLE_TEMPLATES,
    END_USERS,
    HOSTILE_NUMBERS,
    HOSTILE_SHAPES,
    HOT_PATHS,
    MUTATION_PATHS,
    SLOW_NUMBERS,
    STRING_KINDS,
    Sent,
    hostile_string,
    ingest_and_check,
    mutated_from,
    nested,
    reconcile_books_only,
    valid_from,
    whole_record_replacement,
)

_COMMON = {
    "deadline": None,
    "derandomize": False,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
}
settings.register_profile("fuzz-default", max_examples=60, **_COMMON)
settings.register_profile("fuzz-long", max_examples=int(os.environ.get("FUZZ_INGEST_EXAMPLES", "2000")), **_COMMON)
LONG = os.environ.get("FUZZ_INGEST_PROFILE", "") == "long"
PROFILE = settings.get_profile("fuzz-long" if LONG else "fuzz-default")
NUMBERS = HOSTILE_NUMBERS + (SLOW_NUMBERS if LONG else [])


@st.composite
def hostile_values(draw: st.DrawFn, suffix: str) -> str:
    kind = draw(st.sampled_from(["number", "string", "shape", "deep"]))
    if kind == "number":
        return draw(st.sampled_from(NUMBERS))
    if kind == "string":
        return hostile_string(draw(st.sampled_from(STRING_KINDS)), suffix)
    if kind == "shape":
        return draw(st.sampled_from(HOSTILE_SHAPES))
    return nested(draw(st.sampled_from([64, 998, 999, 1000, 3000])))


@st.composite
def mutated_records(draw: st.DrawFn, position: int) -> Sent:
    if draw(st.integers(0, 19)) == 0:
        # Now and then not a record at all.
        return whole_record_replacement(draw(st.sampled_from(["42", "null", '"text"', "[]", nested(1000)])))
    template = draw(st.sampled_from(ALL_TEMPLATES))
    end_user = draw(st.sampled_from([*END_USERS, f"stranger-{position}"]))
    paths = draw(
        st.lists(st.one_of(st.sampled_from(HOT_PATHS), st.sampled_from(MUTATION_PATHS)), min_size=1, max_size=3)
    )
    mutations = {path: draw(hostile_values(f"-{position}-{i}")) for i, path in enumerate(dict.fromkeys(paths))}
    return mutated_from(template, end_user=end_user, mutations=mutations)


@st.composite
def mixed_batches(draw: st.DrawFn) -> tuple[list[Sent], bool]:
    n_valid = draw(st.integers(0, 3))
    n_bad = draw(st.integers(1, 3))
    valid = [
        valid_from(draw(st.sampled_from(BILLABLE_TEMPLATES)), end_user=draw(st.sampled_from(END_USERS)))
        for _ in range(n_valid)
    ]
    bad = [draw(mutated_records(i)) for i in range(n_bad)]
    if len(valid) + len(bad) == 1 and bad[0].call_id is None and bad[0].expect == "kept":
        # A body that is one bare scalar/array is a body-level error (400), not a record in a batch.
        valid.append(valid_from(BILLABLE_TEMPLATES[0], end_user=END_USERS[0]))
    batch = draw(st.permutations(valid + bad))
    return list(batch), draw(st.booleans())


class _Rollback(Exception):
    """Undo one example's writes, so every example starts from the same books."""


@pytest.mark.django_db
@settings(PROFILE)
@given(case=mixed_batches())
def test_any_mixed_batch_keeps_the_accounting_contract(internal_client, account, case) -> None:
    batch, ndjson = case
    note(f"{'NDJSON' if ndjson else 'JSON array'} of {len(batch)}: {batch!r}")
    try:
        with transaction.atomic():
            ingest_and_check(internal_client, batch, ndjson=ndjson)
            code, output = reconcile_books_only()
            assert code == 0, f"reconcile --books-only exited {code}:\n{output}"
            raise _Rollback
    except _Rollback:
        pass
