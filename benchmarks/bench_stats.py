"""Paired slowdown figures with their uncertainty (pure functions, no I/O).

On this shared virtual machine the same CPU-bound work takes 0.95 ms in one second and
1.7-1.8 ms in the next (a fixed Python loop timed in chunks, no other process running),
so one run of a plan varies by ±10 % against the next one. A slowdown goal of a few
per cent is then decided only by many rounds of paired runs, and only as far as the
rounds' spread allows: the verdict says "undecided" when the 95 % interval of the
median straddles the goal.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Paired:
    """A case's wall time over the baseline's, round by round."""

    ratios: tuple[float, ...]
    median: float
    low: float  # 95 % bootstrap interval of the median
    high: float
    verdict: str  # "met" | "NOT met" | "undecided"


def paired(ratios: Sequence[float], goal: float, *, resamples: int = 4000, seed: int = 0) -> Paired:
    """The median of ``ratios`` with a percentile-bootstrap 95 % interval (seeded, so the
    same ratios always give the same figures) and the verdict against ``goal`` (a ratio:
    1.05 for "slowed by under 5 %"): met when the whole interval is under it, NOT met
    when the whole interval is at or over it, else undecided."""
    values = tuple(float(r) for r in ratios)
    if not values:
        raise ValueError("no paired rounds")
    rng = random.Random(seed)
    medians = sorted(
        statistics.median(rng.choices(values, k=len(values))) for _ in range(resamples)
    )
    low = medians[int(0.025 * resamples)]
    high = medians[min(resamples - 1, int(0.975 * resamples))]
    if high < goal:
        verdict = "met"
    elif low >= goal:
        verdict = "NOT met"
    else:
        verdict = "undecided"
    return Paired(values, statistics.median(values), low, high, verdict)


def overall(verdicts: Sequence[str]) -> str:
    """One verdict for several: NOT met if any is, else undecided if any is, else met."""
    for verdict in ("NOT met", "undecided"):
        if verdict in verdicts:
            return verdict
    return "met"


def percent(ratio: float) -> str:
    """A ratio as a signed percentage: 1.0312 -> '+3.12 %'."""
    return f"{(ratio - 1) * 100:+.2f} %"
