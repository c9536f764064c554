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
# A checkout (or editable install) finds its own triton_repo/; an installed package is told where it is.
DEFAULT_MODEL_REPOSITORY = REPO_ROOT / "triton_repo" if (REPO_ROOT / "triton_repo").is_dir() else Path("triton_repo")


@dataclass(frozen=True)
class Settings:
    redis_url: str = "redis://127.0.0.1:6379/0"
    dicomweb_url: str = "http://127.0.0.1:8042/dicom-web"
    dicomweb_username: str = ""
    dicomweb_password: str = field(default="", repr=False)
    # PACS auth: "" (basic when a username is set, else none), basic, bearer (a static token) or oauth2 (client
    # credentials against the token URL); TLS trust (a CA bundle; verify off only for tests) and mutual TLS.
    dicomweb_auth: str = ""
    dicomweb_bearer_token: str = field(default="", repr=False)
    dicomweb_oauth_token_url: str = ""
    dicomweb_oauth_client_id: str = ""
    dicomweb_oauth_client_secret: str = field(default="", repr=False)
    dicomweb_oauth_scope: str = ""
    dicomweb_ca_file: str = ""
    dicomweb_tls_verify: bool = True
    dicomweb_client_cert_file: str = ""
    dicomweb_client_key_file: str = ""
    dicomweb_connect_timeout_s: float = 5.0
    dicomweb_retries: int = 3  # connection errors and 429/502/503/504 on GET, with backoff
    fhir_url: str = "http://127.0.0.1:8080/fhir"
    triton_grpc_url: str = "127.0.0.1:8001"
    # Triton client (imaging_cds/inference/triton.py): request deadline, retries on UNAVAILABLE, requests in flight
    # per worker, and TLS on the gRPC channel (CA, and a client certificate + key for mutual TLS; PEM files).
    triton_timeout_s: float = 120.0
    triton_retries: int = 3
    triton_max_in_flight: int = 3
    triton_request_bytes: int = 8 << 20
    triton_tls: bool = False
    triton_tls_ca_file: str = ""
    triton_tls_cert_file: str = ""
    triton_tls_key_file: str = ""
    # "system": input and output tensors through POSIX shared memory registered with Triton, which must share the
    # worker's /dev/shm (same host; in Kubernetes a sidecar with an in-memory emptyDir); falls back to gRPC, logged.
    triton_shared_memory: str = "none"
    model_repository: Path = DEFAULT_MODEL_REPOSITORY
    # The models a worker runs: names of folders in model_repository, comma-separated; empty: every model there.
    models: str = ""
    # Where the FHIR server reaches the gateway's webhook; the Subscription's channel endpoint.
    public_webhook_url: str = "http://127.0.0.1:8090/fhir/notify"
    http_host: str = "127.0.0.1"
    http_port: int = 8090
    grpc_host: str = "127.0.0.1"
    grpc_port: int = 50051
    webhook_secret: str = field(default="", repr=False)
    log_level: str = "INFO"  # gateway and worker (read by the CLI before anything logs)
    # A worker's Prometheus metrics (the gateway's are GET /metrics on its HTTP port); port 0: not served.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    # TLS for the gRPC API: PEM files; both set = TLS, neither = plaintext (e.g. TLS ends at an ingress or mesh).
    grpc_tls_cert_file: str = ""
    grpc_tls_key_file: str = ""
    register_subscription: bool = True
    report_status: str = "preliminary"
    performer_display: str = "imaging-cds"
    queue_prefix: str = "imaging-cds"
    consumer_group: str = "workers"
    max_body_bytes: int = 1_000_000
    http_timeout_s: float = 30.0
    inference_slab: int = 32
    # How the EHR tells us about studies: "rest-hook" (R4 criteria Subscription), "backport" (R4 Subscriptions
    # Backport, topic-based) or "none" (polling only). Polling also runs beside subscriptions, less often.
    subscription_mode: str = "rest-hook"
    subscription_topic: str = ""  # backport: the SubscriptionTopic canonical URL the EHR publishes
    backport_content: str = "id-only"  # backport payload: empty, id-only or full-resource
    subscription_check_s: float = 60.0  # how often the gateway checks its Subscription and re-creates it
    poll_interval_s: float = 300.0  # reconciler interval beside a subscription
    poll_only_interval_s: float = 30.0  # reconciler interval with subscription_mode "none"
    poll_lookback_s: float = 86_400.0  # on first start, studies updated this long ago are considered
    # Job engine.
    visibility_timeout_s: float = 60.0  # a job whose worker stopped renewing its claim this long is taken over
    max_attempts: int = 6  # transient failures before the job is dead-lettered
    max_deliveries: int = 10  # times a job may be taken (crashed workers included) before it is dead-lettered
    retry_base_s: float = 2.0  # backoff: base * 2^(attempt-1), half of it random (jitter), capped
    retry_cap_s: float = 300.0
    stability_window_s: float = 30.0  # instance count unchanged this long = study complete (count unknown)
    max_wait_for_images_s: float = 21_600.0  # then an incomplete study is reported not analysable
    # EHR authentication: "none", or "smart" (SMART Backend Services: client_credentials grant, the client
    # authenticated by a JWT signed with its private key, RS384 for an RSA key or ES384 for an EC P-384 key).
    fhir_auth: str = "none"
    fhir_smart_client_id: str = ""
    fhir_smart_private_key_file: str = ""  # PEM (PKCS#8 or traditional), unencrypted; mount it as a secret
    fhir_smart_key_id: str = ""  # "kid" of the assertion; default: the key's RFC 7638 thumbprint
    fhir_smart_algorithm: str = ""  # RS384 or ES384; default: from the key
    fhir_smart_token_url: str = ""  # default: token_endpoint of {fhir_url}/.well-known/smart-configuration
    # SMART v2 scopes, least privilege: read studies, orders and endpoints, write results, keep a Subscription.
    fhir_smart_scope: str = (
        "system/ImagingStudy.rs system/Endpoint.r system/ServiceRequest.r system/DiagnosticReport.crus "
        "system/Observation.crus system/Device.crs system/Provenance.crs system/Subscription.cruds"
    )

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
        _one_of("REPORT_STATUS", settings.report_status, ("preliminary", "final"))
        _one_of("LOG_LEVEL", settings.log_level.upper(), ("DEBUG", "INFO", "WARNING", "ERROR"))
        if bool(settings.grpc_tls_cert_file) != bool(settings.grpc_tls_key_file):
            raise ValueError("IMAGING_CDS_GRPC_TLS_CERT_FILE and IMAGING_CDS_GRPC_TLS_KEY_FILE go together")
        if bool(settings.triton_tls_cert_file) != bool(settings.triton_tls_key_file):
            raise ValueError("IMAGING_CDS_TRITON_TLS_CERT_FILE and IMAGING_CDS_TRITON_TLS_KEY_FILE go together")
        _one_of("TRITON_SHARED_MEMORY", settings.triton_shared_memory, ("none", "system"))
        _one_of("SUBSCRIPTION_MODE", settings.subscription_mode, ("rest-hook", "backport", "none"))
        _one_of("BACKPORT_CONTENT", settings.backport_content, ("empty", "id-only", "full-resource"))
        _one_of("FHIR_AUTH", settings.fhir_auth, ("none", "smart"))
        if settings.fhir_auth == "smart" and not (
            settings.fhir_smart_client_id and settings.fhir_smart_private_key_file
        ):
            raise ValueError(
                "IMAGING_CDS_FHIR_AUTH=smart needs IMAGING_CDS_FHIR_SMART_CLIENT_ID and "
                "IMAGING_CDS_FHIR_SMART_PRIVATE_KEY_FILE"
            )
        if settings.subscription_mode == "backport" and not settings.subscription_topic:
            raise ValueError("IMAGING_CDS_SUBSCRIPTION_MODE=backport needs IMAGING_CDS_SUBSCRIPTION_TOPIC")
        return settings


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"IMAGING_CDS_{name} must be one of {', '.join(allowed)}; got {value!r}")
