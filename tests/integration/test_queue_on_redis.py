"""The job queue on a real Redis: dedup, at-least-once delivery, reclaim after a worker dies."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from imaging_cds.jobs.model import JobState, StudyRef
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


def test_a_job_left_unacknowledged_by_a_dead_worker_is_reclaimed(queue: JobQueue) -> None:
    submitted = queue.submit(StudyRef("study-2"))
    taken = queue.next_delivery("dies", block_ms=100)
    assert taken is not None
    assert queue.next_delivery("survivor", block_ms=100) is None  # not yet: still within its visibility timeout
    time.sleep(0.6)
    reclaimed = queue.next_delivery("survivor", block_ms=100)
    assert reclaimed is not None and reclaimed.job_id == submitted.job_id
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
