import random

import pytest

from imaging_cds.jobs.policy import backoff_s, study_readiness


def test_backoff_doubles_is_capped_and_jittered_within_half() -> None:
    rng = random.Random(1)
    for attempt, ceiling in [(1, 2.0), (2, 4.0), (3, 8.0), (10, 300.0)]:
        delays = [backoff_s(attempt, 2.0, 300.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # really random, not one fixed delay


def test_expected_count_reached_is_ready_at_once() -> None:
    r = study_readiness(expected=220, observed=220, previous_observed=-1, previous_stable_since=0, now=100, window_s=30)
    assert r.ready


def test_fewer_images_than_announced_waits_and_says_why() -> None:
    r = study_readiness(expected=220, observed=150, previous_observed=-1, previous_stable_since=0, now=100, window_s=30)
    assert not r.ready and r.wait_s >= 1 and "150 of the 220" in r.reason


@pytest.mark.parametrize(
    ("previous", "since", "now", "ready"),
    [(-1, 0, 100, False), (180, 80, 100, False), (180, 60, 100, True), (170, 60, 100, False)],
)
def test_unknown_count_waits_for_a_stable_window(previous: int, since: float, now: float, ready: bool) -> None:
    r = study_readiness(None, 180, previous, since, now, window_s=30)
    assert r.ready is ready
    if previous != 180:
        assert r.stable_since == now  # the count changed: the window starts again
