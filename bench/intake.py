#!/usr/bin/env python3
"""Intake benchmark: notifications accepted per second by one gateway process, against raw XADD from Python.

    .venv/bin/python bench/intake.py [--notifications 20000] [--connections 32] [--submits 2000]

Starts its own Redis (127.0.0.1, AOF on) and one `imaging-cds gateway` process (polling and Subscription off),
then, in this process:
- baseline: XADD of one small entry per call, sequentially on one connection (`raw_xadd_per_s`);
- ours: R4 rest-hook notifications (PUT /fhir/notify/ImagingStudy/{id}, the full ImagingStudy as body, the Bearer
  secret checked) over keep-alive connections from an asyncio client; every study is sent twice, so half of the
  notifications take the dedup path. Each accepted notification costs the gateway a JSON parse, validation, and
  one atomic Redis script (dedup key, job hash, state index, XADD, PUBLISH);
- gRPC `Submit` latency, sequential calls, p50 and p99.
Prints JSON; `ratio` = notifications accepted per second / raw XADD per second. Goal: >= 0.5.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import httpx
import redis

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from imaging_cds.v1 import jobs_pb2, jobs_pb2_grpc  # noqa: E402
from tests.services import RedisProcess, free_port, imaging_cds_process, wait_for  # noqa: E402

SECRET = "bench-secret"


def notification(study_id: str) -> bytes:
    resource = {
        "resourceType": "ImagingStudy",
        "id": study_id,
        "meta": {"versionId": "1", "lastUpdated": "2026-11-25T10:00:00.000Z"},
        "status": "available",
        "identifier": [
            {"system": "urn:dicom:uid", "value": f"urn:oid:1.2.826.0.1.3680043.8.498.{abs(hash(study_id))}"}
        ],
        "subject": {"reference": "Patient/bench"},
        "endpoint": [{"reference": "Endpoint/pacs"}],
        "numberOfInstances": 220,
        "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
    }
    return json.dumps(resource).encode()


def raw_xadd_rate(url: str, n: int) -> float:
    client = redis.Redis.from_url(url)
    started = time.perf_counter()
    for i in range(n):
        client.xadd("bench:raw", {"job_id": f"{i:032x}"})
    return n / (time.perf_counter() - started)


async def _connection(port: int, requests: list[bytes], accepted: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for request in requests:
        writer.write(request)
        await writer.drain()
        status_line = await reader.readline()
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        if status_line.split()[1] == b"202":
            accepted.append(1)
    writer.close()
    await writer.wait_closed()


def gateway_rate(port: int, n: int, connections: int) -> tuple[float, int]:
    requests = []
    for i in range(n // 2):
        body = notification(f"bench-{i}")
        head = (
            f"PUT /fhir/notify/ImagingStudy/bench-{i} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Authorization: Bearer {SECRET}\r\nContent-Type: application/fhir+json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        requests += [head + body, head + body]  # the second copy is a duplicate: dedup path
    shares = [requests[i::connections] for i in range(connections)]
    accepted: list[int] = []

    async def run() -> None:
        await asyncio.gather(*(_connection(port, share, accepted) for share in shares))

    started = time.perf_counter()
    asyncio.run(run())
    elapsed = time.perf_counter() - started
    return len(requests) / elapsed, len(accepted)


def submit_latencies(port: int, n: int) -> list[float]:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        latencies = []
        for i in range(n):
            request = jobs_pb2.SubmitRequest(study=jobs_pb2.StudyReference(imaging_study_id=f"grpc-{i}"))
            started = time.perf_counter()
            stub.Submit(request, timeout=10)
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notifications", type=int, default=20000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--submits", type=int, default=2000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imaging-cds-intake-") as tmp:
        own_redis = RedisProcess(Path(tmp) / "redis")
        own_redis.start()
        http_port, grpc_port = free_port(), free_port()
        env = {
            **os.environ,
            "IMAGING_CDS_REDIS_URL": own_redis.url,
            "IMAGING_CDS_HTTP_PORT": str(http_port),
            "IMAGING_CDS_GRPC_PORT": str(grpc_port),
            "IMAGING_CDS_WEBHOOK_SECRET": SECRET,
            "IMAGING_CDS_SUBSCRIPTION_MODE": "none",
            "IMAGING_CDS_POLL_ONLY_INTERVAL_S": "3600",
            "IMAGING_CDS_FHIR_URL": "http://127.0.0.1:9/fhir",
        }
        try:
            with imaging_cds_process("gateway", env, Path(tmp) / "gateway.log"):
                wait_for("gateway", lambda: httpx.get(f"http://127.0.0.1:{http_port}/readyz").status_code == 200)
                xadd = raw_xadd_rate(own_redis.url, args.notifications)
                rate, accepted = gateway_rate(http_port, args.notifications, args.connections)
                latencies = submit_latencies(grpc_port, args.submits)
                queued = redis.Redis.from_url(own_redis.url).xlen("imaging-cds:jobs:routine")
        finally:
            own_redis.stop()
    expected_jobs = args.notifications // 2 + args.submits
    report = {
        "benchmark": "intake",
        "baseline": "raw XADD from Python, sequential, one connection",
        "raw_xadd_per_s": round(xadd),
        "notifications_per_s": round(rate),
        "ratio": round(rate / xadd, 3),
        "goal": ">= 0.5",
        "notifications": args.notifications,
        "accepted": accepted,
        "jobs_queued": queued,
        "jobs_expected": expected_jobs,
        "grpc_submit_ms": {
            "p50": round(statistics.median(latencies), 3),
            "p99": round(statistics.quantiles(latencies, n=100)[98], 3),
            "calls": len(latencies),
        },
    }
    print(json.dumps(report, indent=2))
    return 0 if queued == expected_jobs and accepted == args.notifications else 1


if __name__ == "__main__":
    sys.exit(main())
