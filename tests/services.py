"""Helpers for tests on the real services: start our own processes, load the PACS and the EHR, wait for results."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pydicom

from imaging_cds.dicomweb.client import PacsClient
from imaging_cds.fhir.client import FhirClient
from imaging_cds.jobs.model import Job
from imaging_cds.jobs.queue import JobQueue

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def tcp_relay(port: int, target: tuple[str, int]) -> Iterator[None]:
    """Loopback port ``port`` relayed to ``target`` while the block runs: a server that becomes reachable (a
    Triton that comes up late) without restarting the real one. Every socket is closed and every thread joined at
    exit."""
    listener = socket.create_server(("127.0.0.1", port))
    listener.settimeout(0.2)
    stop = threading.Event()
    sockets: list[socket.socket] = [listener]
    threads: list[threading.Thread] = []

    def pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(1 << 20):
                sink.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def accept() -> None:
        while not stop.is_set():
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            sockets.extend((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                thread = threading.Thread(target=pump, args=(a, b), daemon=True)
                thread.start()
                threads.append(thread)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        yield
    finally:
        stop.set()
        acceptor.join(timeout=5)
        for s in sockets:
            with suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for thread in threads:
            thread.join(timeout=5)


def wait_for(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0, every_s: float = 0.5) -> T:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            value = probe()
        except (httpx.HTTPError, OSError):
            value = None
        if value:
            return value
        time.sleep(every_s)
    raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}")


def wait_all_terminal(queue: JobQueue, ids: list[str], timeout_s: float) -> list[Job]:
    """The jobs ``ids``, in that order, once every one has reached a terminal state."""

    def done() -> list[Job] | None:
        jobs = [queue.get(i) for i in ids]
        ended = [j for j in jobs if j is not None and j.state.terminal]
        return ended if len(ended) == len(ids) else None

    return wait_for(f"{len(ids)} jobs to end", done, timeout_s=timeout_s, every_s=1)


SANDBOX = Path(__file__).resolve().parents[1] / "scripts" / "sandbox"


class SandboxError(RuntimeError):
    """`scripts/sandbox up` failed; the message is its stderr."""


@contextmanager
def sandbox(state_dir: Path, *options: str) -> Iterator[dict[str, Any]]:
    """`scripts/sandbox up --json` with ``options`` (e.g. ``--only triton``) under ``state_dir``: yields what it
    printed (the ``IMAGING_CDS_*`` settings and the PIDs), and stops every service it started, by PID, at exit."""
    up = subprocess.run(
        [sys.executable, str(SANDBOX), "up", "--state-dir", str(state_dir), "--json", *options],
        capture_output=True,
        text=True,
        check=False,
    )
    try:
        if up.returncode != 0:
            raise SandboxError(up.stderr)
        yield json.loads(up.stdout.strip().splitlines()[-1])
    finally:
        subprocess.run([sys.executable, str(SANDBOX), "down", "--state-dir", str(state_dir)], check=False)


@contextmanager
def imaging_cds_process(command: str, env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`imaging-cds <command>` as a child process with its output in log_path; stopped by PID at exit."""
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imaging_cds.cli", command], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield proc
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def store_folder(pacs: PacsClient, folder: Path, batch: int = 40) -> int:
    return store_files(pacs, sorted(p for p in folder.rglob("*.dcm")), batch)


def store_files(pacs: PacsClient, files: list[Path], batch: int = 40) -> int:
    for i in range(0, len(files), batch):
        pacs.store(pydicom.dcmread(p) for p in files[i : i + batch])
    return len(files)


def create_study_in_ehr(
    fhir: FhirClient,
    study_uid: str,
    dicomweb_url: str,
    n_instances: int,
    status: str = "available",
    with_order: bool = False,
) -> dict[str, Any]:
    """A synthetic Patient, the PACS Endpoint and an ImagingStudy pointing at both, as an EHR would hold them; with
    ``with_order``, also the order (a CT chest ServiceRequest) the study is based on."""
    patient = fhir.create(
        {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:imaging-cds:test-patient", "value": study_uid[-12:]}],
            "name": [{"family": "Synthetic", "given": ["Patient"]}],
        }
    )
    endpoint = fhir.create(
        {
            "resourceType": "Endpoint",
            "status": "active",
            "connectionType": {
                "system": "http://terminology.hl7.org/CodeSystem/endpoint-connection-type",
                "code": "dicom-wado-rs",
            },
            "payloadType": [{"text": "DICOM"}],
            "address": dicomweb_url,
        }
    )
    study: dict[str, Any] = {
        "resourceType": "ImagingStudy",
        "status": status,
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "subject": {"reference": f"Patient/{patient['id']}"},
        "endpoint": [{"reference": f"Endpoint/{endpoint['id']}"}],
        "numberOfInstances": n_instances,
    }
    if with_order:
        order = fhir.create(
            {
                "resourceType": "ServiceRequest",
                "status": "active",
                "intent": "order",
                "priority": "routine",
                "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "CT Chest"}]},
                "subject": {"reference": f"Patient/{patient['id']}"},
            }
        )
        study["basedOn"] = [{"reference": f"ServiceRequest/{order['id']}"}]
    return fhir.create(study)


class RedisProcess:
    """A Redis of the test's own (AOF on), which the test may stop and restart by PID."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.data_dir = data_dir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        import redis

        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
                "--dir",
                str(self.data_dir),
                "--daemonize",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

        def answers() -> bool:
            try:
                return bool(redis.Redis.from_url(self.url).ping())
            except redis.RedisError:
                return False

        wait_for("redis", answers, timeout_s=20, every_s=0.1)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()  # SIGTERM: Redis flushes its AOF and exits
            self.proc.wait(timeout=20)
            self.proc = None
