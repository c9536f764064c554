"""One settings object for every service, read from ``IMAGING_CDS_*`` environment variables.

Every variable has a default that suits the local sandbox (``scripts/sandbox up`` prints the exports), so a
deployment sets only what differs. Secrets (passwords, webhook secrets) are read here and never logged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "triton_repo"


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    dicomweb_url: str = "http://127.0.0.1:8042/dicom-web"
    dicomweb_username: str = ""
    dicomweb_password: str = field(default="", repr=False)
    fhir_url: str = "http://127.0.0.1:8080/fhir"
    triton_grpc_url: str = "127.0.0.1:8001"
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    # Where the FHIR server reaches the gateway's webhook; the Subscription's channel endpoint.
    public_webhook_url: str = "http://127.0.0.1:8090/fhir/notify"
    http_host: str = "127.0.0.1"
    http_port: int = 8090
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    webhook_secret: str = field(default="", repr=False)
    register_subscription: bool = True
    report_status: str = "preliminary"
    performer_display: str = "imaging-cds"
    stream: str = "imaging-cds:jobs"
    consumer_group: str = "workers"
    max_body_bytes: int = 1_000_000
    http_timeout_s: float = 30.0
    inference_slab: int = 32

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name, spec in cls.__dataclass_fields__.items():
            raw = env.get(f"IMAGING_CDS_{name.upper()}")
            if raw is None:
                continue
            default = spec.default
            if isinstance(default, bool):
                values[name] = raw.strip().lower() in ("1", "true", "yes", "on")
            elif isinstance(default, int):
                values[name] = int(raw)
            elif isinstance(default, float):
                values[name] = float(raw)
            elif isinstance(default, Path):
                values[name] = Path(raw)
            else:
                values[name] = raw
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.report_status not in ("preliminary", "final"):
            raise ValueError(
                f"IMAGING_CDS_REPORT_STATUS must be 'preliminary' or 'final', got {settings.report_status!r}"
            )
        return settings
