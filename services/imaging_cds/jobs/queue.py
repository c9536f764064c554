"""The job queue: a Redis Stream with a consumer group, job state in hashes, dedup keys.

Delivery is at least once: a worker acknowledges a stream entry only after the job reached a terminal state, and
entries a dead worker left pending are claimed again after ``visibility_timeout_s``. Duplicate effects are prevented
downstream by idempotent FHIR writes (conditional create on deterministic identifiers).

Keys (``{prefix}`` defaults to ``imaging-cds``):
  ``{prefix}:jobs``            stream of ``job_id`` entries (consumer group ``workers``)
  ``{prefix}:job:{job_id}``    hash: the ``Job`` fields
  ``{prefix}:dedup:{key}``     the job id for a study (``StudyRef.dedup_key``)
  ``{prefix}:events:{job_id}`` pub/sub channel announcing each state change
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from imaging_cds.jobs.model import Job, JobState, Priority, StudyRef

_ENQUEUE = """
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 3))
redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[1], 'priority', ARGV[2])
return {1, ARGV[1]}
"""


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    created: bool


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to a worker; ack it once the job is terminal."""

    entry_id: str
    job_id: str


class JobQueue:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "imaging-cds",
        group: str = "workers",
        visibility_timeout_s: float = 300.0,
    ) -> None:
        self._redis = client
        self._prefix = prefix
        self.stream = f"{prefix}:jobs"
        self.group = group
        self.visibility_timeout_ms = int(visibility_timeout_s * 1000)
        self._enqueue = client.register_script(_ENQUEUE)

    @classmethod
    def from_url(cls, url: str, **kwargs: object) -> JobQueue:
        return cls(redis.Redis.from_url(url, decode_responses=True), **kwargs)  # type: ignore[arg-type]

    def _job_key(self, job_id: str) -> str:
        return f"{self._prefix}:job:{job_id}"

    def _events(self, job_id: str) -> str:
        return f"{self._prefix}:events:{job_id}"

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def ensure_group(self) -> None:
        try:
            self._redis.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as err:
            if "BUSYGROUP" not in str(err):
                raise

    def submit(self, study: StudyRef, priority: Priority = Priority.ROUTINE) -> Enqueued:
        """Queue a job for the study, or return the job that already exists for it."""
        now = time.time()
        job = Job(job_id=uuid.uuid4().hex, study=study, priority=priority, created=now, updated=now)
        flat = [item for pair in job.to_redis().items() for item in pair]
        created, job_id = self._enqueue(
            keys=[f"{self._prefix}:dedup:{study.dedup_key()}", self._job_key(job.job_id), self.stream],
            args=[job.job_id, priority.value, *flat],
        )
        if created:
            self._redis.publish(self._events(job.job_id), JobState.QUEUED.value)
        return Enqueued(job_id=str(job_id), created=bool(created))

    def get(self, job_id: str) -> Job | None:
        fields = self._redis.hgetall(self._job_key(job_id))
        return Job.from_redis(fields) if fields else None  # type: ignore[arg-type]

    def save(self, job: Job) -> None:
        """Write the job's new state and announce it to watchers."""
        self._redis.hset(self._job_key(job.job_id), mapping=job.to_redis())  # type: ignore[arg-type]
        self._redis.publish(self._events(job.job_id), job.state.value)

    def next_delivery(self, consumer: str, block_ms: int = 2000) -> Delivery | None:
        """A stale entry another worker left unacknowledged, else the next new entry, else None after block_ms."""
        r: Any = self._redis  # redis-py's stream replies are untyped nested lists
        claimed = r.xautoclaim(self.stream, self.group, consumer, min_idle_time=self.visibility_timeout_ms, count=1)
        entries = claimed[1] if claimed else []
        if not entries:
            response = r.xreadgroup(self.group, consumer, {self.stream: ">"}, count=1, block=block_ms)
            entries = response[0][1] if response else []
        for entry_id, fields in entries:
            if fields:  # a claimed entry trimmed from the stream comes back empty
                return Delivery(entry_id=entry_id, job_id=fields["job_id"])
            self._redis.xack(self.stream, self.group, entry_id)
        return None

    def ack(self, delivery: Delivery) -> None:
        self._redis.xack(self.stream, self.group, delivery.entry_id)

    def watch(self, job_id: str, poll_s: float = 1.0, timeout_s: float = 3600.0) -> Iterator[Job]:
        """The job now, then each change, until a terminal state (or timeout_s)."""
        pubsub = self._redis.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
        pubsub.subscribe(self._events(job_id))
        try:
            last: tuple[JobState, float] | None = None
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                job = self.get(job_id)
                if job is None:
                    return
                if (job.state, job.updated) != last:
                    last = (job.state, job.updated)
                    yield job
                if job.state.terminal:
                    return
                pubsub.get_message(timeout=poll_s)
        finally:
            pubsub.close()
