"""When to run a job again: retry backoff and the wait for a study's images to be complete. Pure functions."""

from __future__ import annotations

import random
from dataclasses import dataclass


def backoff_s(attempt: int, base_s: float, cap_s: float, rng: random.Random | None = None) -> float:
    """Delay before retry number `attempt` (1-based): exponential, capped, half of it random ("equal jitter").

    The random half spreads retries of many jobs that failed together (an EHR restart) so they do not return as one
    burst; the fixed half keeps a minimum spacing.
    """
    ceiling = min(cap_s, base_s * 2 ** max(attempt - 1, 0))
    return float(ceiling / 2 + (rng or random).uniform(0, ceiling / 2))


@dataclass(frozen=True)
class Readiness:
    """Whether a study's images are all in the PACS. When not, `wait_s` says when to look again."""

    ready: bool
    observed: int
    stable_since: float
    wait_s: float = 0.0
    reason: str = ""


def study_readiness(
    expected: int | None,
    observed: int,
    previous_observed: int,
    previous_stable_since: float,
    now: float,
    window_s: float,
) -> Readiness:
    """Ready when the PACS holds the `expected` instance count (ImagingStudy.numberOfInstances), or, when no count
    is known or it is exceeded, when the count has not changed for `window_s`.

    `previous_*` come from the job's last look (observed -1 = never looked).
    """
    stable_since = previous_stable_since if observed == previous_observed else now
    if expected is not None and observed == expected:
        return Readiness(True, observed, stable_since)
    if expected is not None and observed < expected:
        return Readiness(
            False,
            observed,
            stable_since,
            max(window_s, 1.0),
            f"the PACS holds {observed} of the {expected} images the EHR announced",
        )
    waited = now - stable_since
    if waited >= window_s:
        return Readiness(True, observed, stable_since)
    return Readiness(
        False,
        observed,
        stable_since,
        window_s - waited,
        f"{observed} images, unchanged for {waited:.0f} s of the {window_s:g} s stability window",
    )
