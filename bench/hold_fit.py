"""How well a hold fits its call (issue 20): hold / actual charge on a realistic mix, with and without max_tokens.

    .venv/bin/python bench/hold_fit.py [--calls 3000] [--seed 7]

A simulation of the service's own sizing rule (holds.services: p99_output_tokens, held_output_tokens,
the settings' history length and default), no database: each key calls its model group in a stream; every
call's hold is computed from the key's previous BILLING_HOLD_HISTORY_CALLS charges exactly as authorize does,
then its real charge (prompt + actual output, at gpt-4o-mini's prices) is compared with it. Clients that send
max_tokens are held at prompt + max_tokens (the plugin's worst case). Prints the ratio's percentiles and how
often a charge exceeded its hold (it still lands in full: POST_CALL_NEVER_BLOCKS).
"""

import argparse
import math
import os
import random
import statistics
import sys
from collections import deque
from decimal import ROUND_CEILING, Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "billing_project.settings")
os.environ.setdefault("DATABASE_URL", "postgres://unused@127.0.0.1/unused")  # settings need one; never connected
os.environ.setdefault("DEBUG", "true")

import django  # noqa: E402

django.setup()

from django.conf import settings  # noqa: E402

from holds.services import held_output_tokens, p99_output_tokens  # noqa: E402

INPUT = Decimal("0.00000015")  # gpt-4o-mini, per token
OUTPUT = Decimal("0.0000006")
LIMIT = 16_384  # gpt-4o-mini's max output tokens: the worst case without max_tokens
CREDITS = Decimal(1_000_000)

# (name, share of calls, prompt median, output median, output spread (lognormal sigma), the max_tokens a client
# that sets one sends)
WORKLOADS = [
    ("chat", 0.55, 600, 180, 0.8, 1024),
    ("summarize", 0.2, 2500, 350, 0.5, 512),
    ("code", 0.15, 1200, 700, 0.9, 2048),
    ("classify", 0.1, 300, 4, 0.3, 16),
]


def credits(usd: Decimal) -> int:
    return int((usd * CREDITS).to_integral_value(rounding=ROUND_CEILING))


def draw(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(1, min(cap, round(rng.lognormvariate(math.log(median), sigma))))


def simulate(calls: int, seed: int, *, with_max_tokens: bool, percentile: int = 99) -> tuple[list[float], int]:
    rng = random.Random(seed)
    histories = {name: deque(maxlen=settings.BILLING_HOLD_HISTORY_CALLS) for name, *_ in WORKLOADS}
    ratios: list[float] = []
    over = 0
    names = [w[0] for w in WORKLOADS]
    shares = [w[1] for w in WORKLOADS]
    spec = {w[0]: w for w in WORKLOADS}
    for _ in range(calls):
        name = rng.choices(names, weights=shares)[0]
        _, _, prompt_median, output_median, sigma, max_tokens = spec[name]
        prompt = draw(rng, prompt_median, 0.6, 100_000)
        cap = max_tokens if with_max_tokens else LIMIT
        output = draw(rng, output_median, sigma, cap)
        prompt_usd = prompt * INPUT
        if with_max_tokens:
            held = credits(prompt_usd + max_tokens * OUTPUT)
        else:
            p99 = p99_output_tokens(list(histories[name]), percentile=percentile)
            held = credits(prompt_usd + held_output_tokens(p99, max_output_tokens=LIMIT) * OUTPUT)
        charged = credits(prompt_usd + output * OUTPUT)
        histories[name].append(output)
        ratios.append(held / charged)
        over += charged > held
    return ratios, over


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(share * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    print(
        f"hold / charge over {args.calls} calls (mix: {', '.join(f'{w[0]} {w[1]:.0%}' for w in WORKLOADS)}); "
        f"history {settings.BILLING_HOLD_HISTORY_CALLS} calls, min {settings.BILLING_HOLD_HISTORY_MIN_CALLS}, "
        f"default {settings.BILLING_HOLD_DEFAULT_OUTPUT_TOKENS} tokens"
    )
    print(f"{'':34} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7} {'charge > hold':>14}")
    rows = [("with max_tokens (worst case)", True, 99)] + [
        (f"without max_tokens, sized by p{p}", False, p) for p in (99, 95, 90)
    ]
    for label, with_max_tokens, pct in rows:
        ratios, over = simulate(args.calls, args.seed, with_max_tokens=with_max_tokens, percentile=pct)
        print(
            f"{label:34} {percentile(ratios, 0.5):7.2f} {percentile(ratios, 0.9):7.2f} "
            f"{percentile(ratios, 0.99):7.2f} {statistics.fmean(ratios):7.2f} {over:8d} ({over / len(ratios):.1%})"
        )
    # The old behaviour, for scale: the model's whole output limit held for every call without max_tokens.
    rng = random.Random(args.seed)
    worst = []
    for _ in range(args.calls):
        _, _, prompt_median, output_median, sigma, _ = rng.choices(WORKLOADS, weights=[w[1] for w in WORKLOADS])[0]
        prompt = draw(rng, prompt_median, 0.6, 100_000)
        output = draw(rng, output_median, sigma, LIMIT)
        worst.append(credits(prompt * INPUT + LIMIT * OUTPUT) / credits(prompt * INPUT + output * OUTPUT))
    print(f"{'without max_tokens, model limit':34} {percentile(worst, 0.5):7.2f} {percentile(worst, 0.9):7.2f}")


if __name__ == "__main__":
    main()
