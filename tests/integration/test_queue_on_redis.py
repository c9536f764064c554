"""The job queue on a real Redis: dedup, at-least-once delivery, reclaim after a worker dies."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from imaging_cds.jobs.model import JobState, Priority, StudyRef
from imaging_cds.jobs.queue import JobQueue

pytestmark = pytest.mark.services


@pytest.fixture
def queue(sandbox: dict[str, str]) -> JobQueue:
    client = redis.Redis.from_url(sandbox["IMAGING_CDS_REDIS_URL"], decode_responses=True)
    q = JobQueue(client, prefix=f"test-{uuid.uuid4().hex[:8]}", visibility_timeout_s=0.5)
    q.ensure_group()
    return q


def test_same_study_submitted_twice_is_one_job(queue: JobQueue) -> None:
    first = queue.submit(StudyRef("study-1", "1.2.3"))
    again = queue.submit(StudyRef("study-1"))
    assert first.created and not again.created
    assert again.job_id == first.job_id
    delivery = queue.next_delivery("w1", block_ms=100)
    assert delivery is not None and delivery.job_id == first.job_id
    assert queue.next_delivery("w1", block_ms=100) is None


def test_stat_jobs_are_taken_before_routine_ones(queue: JobQueue) -> None:
    routine = [queue.submit(StudyRef(f"routine-{i}")).job_id for i in range(3)]
    stat = queue.submit(StudyRef("stat-1"), Priority.STAT).job_id
    order = []
    while (d := queue.next_delivery("w", block_ms=100)) is not None:
        order.append(d.job_id)
        queue.ack(d)
    assert order == [stat, *routine]


def test_a_delayed_job_comes_back_when_due_and_not_before(queue: JobQueue) -> None:
    job_id = queue.submit(StudyRef("study-delayed")).job_id
    delivery = queue.next_delivery("w", block_ms=100)
    job = queue.get(job_id)
    assert delivery is not None and job is not None
    queue.retry_later(delivery, job.with_state(JobState.QUEUED, time.time(), not_before=time.time() + 0.5))
    assert queue.next_delivery("w", block_ms=100) is None
    time.sleep(0.6)
    again = queue.next_delivery("w", block_ms=100)
    assert again is not None and again.job_id == job_id


def test_a_failed_job_is_dead_lettered_and_can_be_replayed(queue: JobQueue) -> None:
    job_id = queue.submit(StudyRef("study-dead")).job_id
    delivery = queue.next_delivery("w", block_ms=100)
    job = queue.get(job_id)
    assert delivery is not None and job is not None
    queue.finish(delivery, job.with_state(JobState.FAILED, time.time(), attempts=6, outcome="PACS down"))
    (dead,) = queue.dead_letters()
    assert (dead.job_id, dead.reason, dead.attempts) == (job_id, "PACS down", 6)
    assert [j.job_id for j in queue.list_jobs(JobState.FAILED)] == [job_id]
    replayed = queue.replay(job_id)
    assert replayed is not None and replayed.state is JobState.QUEUED and replayed.attempts == 0
    assert queue.list_jobs(JobState.FAILED) == []
    again = queue.next_delivery("w", block_ms=100)
    assert again is not None and again.job_id == job_id


def test_a_cancelled_job_is_not_delivered_as_work(queue: JobQueue) -> None:
    job_id = queue.submit(StudyRef("study-cancel")).job_id
    cancelled = queue.cancel(job_id)
    assert cancelled is not None and cancelled.state is JobState.CANCELLED
    assert queue.list_jobs(JobState.QUEUED) == []


def test_a_job_left_unacknowledged_by_a_dead_worker_is_reclaimed(queue: JobQueue) -> None:
    submitted = queue.submit(StudyRef("study-2"))
    taken = queue.next_delivery("dies", block_ms=100)
    assert taken is not None
    assert queue.next_delivery("survivor", block_ms=100) is None  # not yet: still within its visibility timeout
    time.sleep(0.6)
    reclaimed = queue.next_delivery("survivor", block_ms=100)
    assert reclaimed is not None and reclaimed.job_id == submitted.job_id
    assert queue.owns(reclaimed, "survivor") and not queue.owns(taken, "dies")
    assert not queue.heartbeat(taken, "dies")  # a worker presumed dead cannot take its job back...
    assert queue.owns(reclaimed, "survivor")  # ...and the survivor keeps it
    assert queue.heartbeat(reclaimed, "survivor")
    queue.ack(reclaimed)
    time.sleep(0.6)
    assert queue.next_delivery("third", block_ms=100) is None


def test_watch_sees_each_state_until_terminal(queue: JobQueue) -> None:
    job_id = queue.submit(StudyRef("study-3")).job_id
    job = queue.get(job_id)
    assert job is not None and job.state is JobState.QUEUED
    queue.save(job.with_state(JobState.RUNNING, time.time()))
    queue.save(job.with_state(JobState.SUCCEEDED, time.time() + 1, report_reference="DiagnosticReport/1"))
    states = [j.state for j in queue.watch(job_id, poll_s=0.1, timeout_s=5)]
    assert states[-1] is JobState.SUCCEEDED


def test_operators_see_dead_letters_and_replay_them_from_the_command_line(sandbox: dict[str, str]) -> None:
    import json
    import subprocess
    import sys

    from tests.conftest import service_env

    env = service_env(sandbox, IMAGING_CDS_QUEUE_PREFIX=f"cli-{uuid.uuid4().hex[:8]}")
    queue = JobQueue(
        redis.Redis.from_url(sandbox["IMAGING_CDS_REDIS_URL"], decode_responses=True),
        prefix=env["IMAGING_CDS_QUEUE_PREFIX"],
    )
    queue.ensure_group()
    job_id = queue.submit(StudyRef("study-cli", "1.2.3")).job_id
    delivery = queue.next_delivery("w", block_ms=100)
    job = queue.get(job_id)
    assert delivery is not None and job is not None
    queue.finish(delivery, job.with_state(JobState.FAILED, time.time(), attempts=6, outcome="study 1.2.3: PACS down"))

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "imaging_cds.cli", "jobs", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    dead = json.loads(cli("list", "--dead", "--json").stdout)
    assert [(d["job_id"], d["reason"]) for d in dead] == [(job_id, "study 1.2.3: PACS down")]
    assert job_id in cli("list", "--state", "failed").stdout
    replayed = cli("replay", job_id)
    assert replayed.returncode == 0 and json.loads(replayed.stdout)["state"] == "queued"
    again = cli("replay", job_id)
    assert again.returncode == 1 and "has not ended" in again.stderr
    assert cli("show", "no-such-job").returncode == 1
