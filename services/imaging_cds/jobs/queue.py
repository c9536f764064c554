"""The job queue: Redis Streams consumer groups, job state in hashes, dedup keys, delayed retries, dead letters.

Delivery is at least once. A worker acknowledges a stream entry only once the job is terminal or handed to the
delayed set; while it works it renews its claim (``heartbeat``), and entries a dead worker left pending are
claimed by another after ``visibility_timeout_s``. Duplicate effects are prevented downstream by idempotent FHIR
writes (conditional create on deterministic identifiers), and a worker checks it still owns the entry (``owns``)
before it writes.

Keys (``{p}`` is the prefix, ``imaging-cds`` by default); this needs one Redis (or a primary), not a Cluster:
  ``{p}:jobs:stat``, ``{p}:jobs:routine``  streams of ``job_id`` entries, consumer group ``workers``; STAT first
  ``{p}:job:{id}``                       hash: the ``Job`` fields
  ``{p}:dedup:{key}``                    the job id for a study (``StudyRef.dedup_key``)
  ``{p}:state:{state}``, ``{p}:index``   sorted sets of job ids by last update, per state and all
  ``{p}:delayed``                        sorted set of job ids by due time (backoff, waiting for images)
  ``{p}:dead``                           stream of dead letters: job id, reason, attempts
  ``{p}:events:{id}``                    pub/sub channel announcing each state change
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio

from imaging_cds.config import Settings
from imaging_cds.jobs.model import Job, JobState, Priority, StudyRef

_SUBMIT = """
local existing = redis.call('GET', KEYS[1])
if existing then return {0, existing} end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('HSET', KEYS[2], unpack(ARGV, 4))
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[3], ARGV[1])
redis.call('XADD', KEYS[3], '*', 'job_id', ARGV[1])
redis.call('PUBLISH', KEYS[6], 'queued')
return {1, ARGV[1]}
"""

# Moves the job between state indexes, writes its fields, announces the change.
_SAVE = """
local old = redis.call('HGET', KEYS[1], 'state')
if old then redis.call('ZREM', ARGV[4] .. ':state:' .. old, ARGV[1]) end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', ARGV[4] .. ':state:' .. ARGV[2], ARGV[3], ARGV[1])
redis.call('ZADD', ARGV[4] .. ':index', ARGV[3], ARGV[1])
redis.call('PUBLISH', KEYS[2], ARGV[2])
"""

# Due delayed jobs go back onto their priority's stream.
_PROMOTE = """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(due) do
  redis.call('ZREM', KEYS[1], id)
  local priority = redis.call('HGET', ARGV[3] .. ':job:' .. id, 'priority') or 'routine'
  redis.call('XADD', ARGV[3] .. ':jobs:' .. priority, '*', 'job_id', id)
end
return #due
"""

# Renews a claim only while this consumer still holds it: a worker that was presumed dead must not take it back.
_RENEW = """
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #pending == 0 or pending[1][2] ~= ARGV[3] then return 0 end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[3], 0, ARGV[2], 'JUSTID')
return 1
"""


@dataclass(frozen=True)
class Enqueued:
    job_id: str
    created: bool


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to a worker; it must end in ack, retry_later or dead_letter."""

    stream: str
    entry_id: str
    job_id: str


@dataclass(frozen=True)
class DeadLetter:
    entry_id: str
    job_id: str
    reason: str
    attempts: int
    at: float


class JobQueue:
    def __init__(
        self,
        client: redis.Redis,
        prefix: str = "imaging-cds",
        group: str = "workers",
        visibility_timeout_s: float = 60.0,
    ) -> None:
        self._redis = client
        self._r: Any = client  # redis-py's stream replies are untyped nested lists
        self.prefix = prefix
        self.streams = {p: f"{prefix}:jobs:{p.value}" for p in (Priority.STAT, Priority.ROUTINE)}
        self.dead_stream = f"{prefix}:dead"
        self.group = group
        self.visibility_timeout_ms = int(visibility_timeout_s * 1000)
        self._submit = client.register_script(_SUBMIT)
        self._save = client.register_script(_SAVE)
        self._promote = client.register_script(_PROMOTE)
        self._renew = client.register_script(_RENEW)
        self._stash: list[Delivery] = []

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> JobQueue:
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5, health_check_interval=30
        )
        return cls(client, **kwargs)

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    # -- keys ---------------------------------------------------------------------------------------------------

    def _job_key(self, job_id: str) -> str:
        return f"{self.prefix}:job:{job_id}"

    def _events(self, job_id: str) -> str:
        return f"{self.prefix}:events:{job_id}"

    # -- set-up and health --------------------------------------------------------------------------------------

    def ping(self) -> bool:
        return bool(self._redis.ping())

    def ensure_group(self) -> None:
        for stream in self.streams.values():
            try:
                self._redis.xgroup_create(stream, self.group, id="0", mkstream=True)
            except redis.ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise

    # -- producers ----------------------------------------------------------------------------------------------

    def submit(self, study: StudyRef, priority: Priority = Priority.ROUTINE) -> Enqueued:
        """Queue a job for the study, or return the job that already exists for it (created=False)."""
        keys, args = self.submit_call(study, priority)
        created, job_id = self._submit(keys=keys, args=args)
        return Enqueued(job_id=str(job_id), created=bool(created))

    def submit_call(self, study: StudyRef, priority: Priority) -> tuple[list[str], list[str]]:
        """Keys and arguments of the atomic submit script for a new job (also used by BatchingSubmitter)."""
        now = time.time()
        job = Job(job_id=uuid.uuid4().hex, study=study, priority=priority, created=now, updated=now)
        keys = [
            f"{self.prefix}:dedup:{study.dedup_key()}",
            self._job_key(job.job_id),
            self.streams[priority],
            f"{self.prefix}:state:{JobState.QUEUED.value}",
            f"{self.prefix}:index",
            self._events(job.job_id),
        ]
        return keys, [job.job_id, priority.value, repr(now), *_flat(job)]

    def stream_length(self) -> int:
        return sum(int(self._redis.xlen(s)) for s in self.streams.values())

    def backlog(self) -> dict[str, int]:
        """Jobs by state (``queued``, ``running``, and the terminal states' kept records), jobs parked in the
        delayed set (``delayed``: backing off or waiting for images) and entries in the dead-letter stream
        (``dead_letters``); one round trip."""
        pipe = self._redis.pipeline(transaction=False)
        for state in JobState:
            pipe.zcard(f"{self.prefix}:state:{state.value}")
        pipe.zcard(f"{self.prefix}:delayed")
        pipe.xlen(self.dead_stream)
        counts = [int(n) for n in pipe.execute()]
        names = [state.value for state in JobState] + ["delayed", "dead_letters"]
        return dict(zip(names, counts, strict=True))

    # -- job state ----------------------------------------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        fields = self._redis.hgetall(self._job_key(job_id))
        return Job.from_redis(fields) if fields else None  # type: ignore[arg-type]

    def save(self, job: Job, client: Any = None) -> None:
        """Write the job's new state, move it between state indexes and announce it to watchers."""
        self._save(
            keys=[self._job_key(job.job_id), self._events(job.job_id)],
            args=[job.job_id, job.state.value, repr(job.updated), self.prefix, *_flat(job)],
            client=client,
        )

    def list_jobs(self, state: JobState | None = None, limit: int = 50, offset: int = 0) -> list[Job]:
        """Jobs in one state (or all), most recently updated first."""
        index = f"{self.prefix}:state:{state.value}" if state else f"{self.prefix}:index"
        ids: list[str] = self._r.zrevrange(index, offset, offset + limit - 1)
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hgetall(self._job_key(job_id))
        return [Job.from_redis(f) for f in pipe.execute() if f]

    # -- consumers ----------------------------------------------------------------------------------------------

    def next_delivery(self, consumer: str, block_ms: int = 2000) -> Delivery | None:
        """The next entry for this worker: STAT before routine, abandoned entries before new ones."""
        if self._stash:
            return self._stash.pop(0)
        self._promote(keys=[f"{self.prefix}:delayed"], args=[repr(time.time()), 100, self.prefix])
        for stream in self.streams.values():
            claimed = self._r.xautoclaim(
                stream, self.group, consumer, min_idle_time=self.visibility_timeout_ms, count=1
            )
            found = self._deliveries(stream, claimed[1] if claimed else [])
            if found:
                return found[0]
        for stream in self.streams.values():
            found = self._read(consumer, [stream], block_ms=None)
            if found:
                return found[0]
        found = self._read(consumer, list(self.streams.values()), block_ms=block_ms)
        self._stash.extend(found[1:])
        return found[0] if found else None

    def _read(self, consumer: str, streams: list[str], block_ms: int | None) -> list[Delivery]:
        response = self._r.xreadgroup(self.group, consumer, {s: ">" for s in streams}, count=1, block=block_ms)
        by_stream = {name: entries for name, entries in response or []}
        return [d for s in streams for d in self._deliveries(s, by_stream.get(s, []))]

    def _deliveries(self, stream: str, entries: list[Any]) -> list[Delivery]:
        found = []
        for entry_id, fields in entries:
            if fields and "job_id" in fields:
                found.append(Delivery(stream=stream, entry_id=entry_id, job_id=fields["job_id"]))
            else:  # trimmed or foreign entry: nothing to do
                self._redis.xack(stream, self.group, entry_id)
        return found

    def heartbeat(self, delivery: Delivery, consumer: str) -> bool:
        """Renew this worker's claim (resets the entry's idle time); False when another worker took it over."""
        renewed = self._renew(keys=[delivery.stream], args=[self.group, delivery.entry_id, consumer])
        return bool(renewed)

    def owns(self, delivery: Delivery, consumer: str) -> bool:
        """True while the entry is pending for this consumer (checked before writing to the EHR)."""
        pending = self._r.xpending_range(
            delivery.stream, self.group, min=delivery.entry_id, max=delivery.entry_id, count=1
        )
        return bool(pending) and pending[0]["consumer"] == consumer

    def ack(self, delivery: Delivery) -> None:
        self._redis.xack(delivery.stream, self.group, delivery.entry_id)

    def finish(self, delivery: Delivery, job: Job) -> None:
        """Record a terminal state and acknowledge the entry, atomically."""
        pipe = self._redis.pipeline(transaction=True)
        self.save(job, client=pipe)
        pipe.xack(delivery.stream, self.group, delivery.entry_id)
        if job.state is JobState.FAILED:
            pipe.xadd(
                self.dead_stream,
                {"job_id": job.job_id, "reason": job.outcome, "attempts": str(job.attempts), "at": repr(job.updated)},
            )
        pipe.execute()

    def retry_later(self, delivery: Delivery, job: Job) -> None:
        """Park the job in the delayed set until job.not_before and acknowledge the entry, atomically."""
        pipe = self._redis.pipeline(transaction=True)
        self.save(job, client=pipe)
        pipe.zadd(f"{self.prefix}:delayed", {job.job_id: job.not_before})
        pipe.xack(delivery.stream, self.group, delivery.entry_id)
        pipe.execute()

    # -- operators ----------------------------------------------------------------------------------------------

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a job that has not ended; returns it (unchanged if it had ended), None if unknown."""
        job = self.get(job_id)
        if job is None or job.state.terminal:
            return job
        job = job.with_state(JobState.CANCELLED, time.time(), outcome="cancelled by an operator; nothing written")
        pipe = self._redis.pipeline(transaction=True)
        self.save(job, client=pipe)
        pipe.zrem(f"{self.prefix}:delayed", job_id)
        pipe.execute()
        return job

    def replay(self, job_id: str) -> Job | None:
        """Queue an ended job again (after the cause was fixed); its attempts start from zero."""
        job = self.get(job_id)
        if job is None or not job.state.terminal:
            return job
        job = job.with_state(
            JobState.QUEUED, time.time(), outcome="replayed by an operator", attempts=0, deliveries=0, not_before=0.0
        )
        pipe = self._redis.pipeline(transaction=True)
        self.save(job, client=pipe)
        pipe.xadd(self.streams[job.priority], {"job_id": job.job_id})
        pipe.execute()
        return job

    def dead_letters(self, limit: int = 50) -> list[DeadLetter]:
        entries = self._r.xrevrange(self.dead_stream, count=limit)
        return [
            DeadLetter(
                entry_id=entry_id,
                job_id=fields["job_id"],
                reason=fields.get("reason", ""),
                attempts=int(fields.get("attempts", "0")),
                at=float(fields.get("at", "0")),
            )
            for entry_id, fields in entries
        ]

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


def _flat(job: Job) -> list[str]:
    return [item for pair in job.to_redis().items() for item in pair]


def queue_from_settings(settings: Settings) -> JobQueue:
    return JobQueue.from_url(
        settings.redis_url,
        prefix=settings.queue_prefix,
        group=settings.consumer_group,
        visibility_timeout_s=settings.visibility_timeout_s,
    )


class BatchingSubmitter:
    """Submits for many concurrent requests of an asyncio server, in one Redis round trip per event-loop turn.

    Each submit is still the same atomic script (dedup and enqueue together), so batching changes the cost, not
    the semantics: two notifications of one study in the same batch still make one job.
    """

    def __init__(self, queue: JobQueue, url: str) -> None:
        self._queue = queue
        self._client: Any = redis.asyncio.Redis.from_url(url, decode_responses=True, socket_timeout=10)
        self._script: Any = self._client.register_script(_SUBMIT)
        self._pending: list[tuple[list[str], list[str], asyncio.Future[Any]]] = []

    async def submit(self, study: StudyRef, priority: Priority = Priority.ROUTINE) -> Enqueued:
        keys, args = self._queue.submit_call(study, priority)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((keys, args, future))
        if len(self._pending) == 1:
            asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self._flush()))
        created, job_id = await future
        return Enqueued(job_id=str(job_id), created=bool(created))

    async def _flush(self) -> None:
        batch, self._pending = self._pending, []
        try:
            pipe = self._client.pipeline(transaction=False)
            for keys, args, _ in batch:
                await self._script(keys=keys, args=args, client=pipe)
            results = await pipe.execute()
        except Exception as err:  # every waiting request gets the error (answered 503), none is left hanging
            for *_, future in batch:
                if not future.done():
                    future.set_exception(err)
            return
        for (*_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)

    async def close(self) -> None:
        await self._client.aclose()
