"""The DICOMweb client against a small PACS of the test's own on loopback: streaming multipart, auth, TLS, retries."""

from __future__ import annotations

import base64
import json
import ssl
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from imaging_cds.dicomweb.client import PacsAuth, PacsClient, PacsTls
from imaging_cds.errors import NotAnalyzableError, TransientError
from imaging_cds.imaging.decode import SeriesDecoder
from imaging_cds.imaging.quality import QualityLimits
from imaging_cds.imaging.volume import VolumeBuilder
from tests.synthetic_series import SeriesSpec, build_series, to_bytes

SPEC = SeriesSpec(n=12)
SERIES = [to_bytes(ds) for ds in build_series(SPEC)]
SERIES_PATH = f"/dicom-web/studies/{SPEC.study_uid}/series/{SPEC.series_uid}"


class FakePacs:
    """Answers WADO-RS series retrieval (multipart/related) and QIDO-RS; records what it was asked."""

    def __init__(self, tls_context: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict[str, str]] = []
        self.fail_first = 0  # answer 503 this many times first
        self.content_length = True
        self.chunked = False
        self.require: Callable[[str], bool] = lambda auth: True
        self.tokens_issued = 0
        self.token_lifetime = 3600
        pacs = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # the OAuth2 token endpoint
                length = int(self.headers.get("Content-Length", 0))
                body = self.rfile.read(length).decode()
                basic = base64.b64encode(b"client-1:s3cret").decode()
                if "grant_type=client_credentials" not in body or self.headers.get("Authorization") != f"Basic {basic}":
                    self._send(401, b"{}", "application/json")
                    return
                pacs.tokens_issued += 1
                token = {"access_token": f"token-{pacs.tokens_issued}", "expires_in": pacs.token_lifetime}
                self._send(200, json.dumps(token).encode(), "application/json")

            def do_GET(self) -> None:
                pacs.requests.append({"path": self.path, **dict(self.headers)})
                if not pacs.require(self.headers.get("Authorization", "")):
                    self._send(401, b"", "text/plain")
                    return
                if pacs.fail_first > 0:
                    pacs.fail_first -= 1
                    self._send(503, b"busy", "text/plain")
                    return
                if self.path.startswith(SERIES_PATH) and "instances" not in self.path:
                    self._multipart()
                elif self.path.startswith("/dicom-web/studies/") and self.path.endswith("/series/9.9"):
                    self._send(404, b"", "text/plain")
                else:
                    self._send(404, b"", "text/plain")

            def _multipart(self) -> None:
                boundary = uuid.uuid4().hex
                body = bytearray()
                for part in SERIES:
                    body += f"--{boundary}\r\nContent-Type: application/dicom\r\n".encode()
                    if pacs.content_length:
                        body += f"Content-Length: {len(part)}\r\n".encode()
                    body += b"\r\n" + part + b"\r\n"
                body += f"--{boundary}--\r\n".encode()
                ctype = f'multipart/related; type="application/dicom"; boundary={boundary}'
                if pacs.chunked:
                    self.send_response(200)
                    self.send_header("Content-Type", ctype)
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    for i in range(0, len(body), 7001):
                        chunk = bytes(body[i : i + 7001])
                        self.wfile.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                    self.wfile.write(b"0\r\n\r\n")
                else:
                    self._send(200, bytes(body), ctype)

            def _send(self, status: int, body: bytes, ctype: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls_context is not None:
            self.server.socket = tls_context.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_address[1]}/dicom-web"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def pacs() -> Iterator[FakePacs]:
    server = FakePacs()
    yield server
    server.close()


def retrieve(client: PacsClient) -> np.ndarray:
    stream = client.iter_series(SPEC.study_uid, SPEC.series_uid)
    builder = VolumeBuilder(SPEC.study_uid, SPEC.series_uid, 12)
    decoder = SeriesDecoder(builder)
    for part in stream:
        decoder.add(part)
    decoder.close()
    return builder.finish(QualityLimits(min_slices=10)).hu


def expected_volume() -> np.ndarray:
    builder = VolumeBuilder(SPEC.study_uid, SPEC.series_uid, 12)
    decoder = SeriesDecoder(builder)
    for part in SERIES:
        decoder.add(part)
    return builder.finish(QualityLimits(min_slices=10)).hu


@pytest.mark.parametrize(("content_length", "chunked"), [(True, False), (False, False), (True, True), (False, True)])
def test_a_series_streams_into_the_volume_with_or_without_part_lengths(
    pacs: FakePacs, content_length: bool, chunked: bool
) -> None:
    pacs.content_length, pacs.chunked = content_length, chunked
    with PacsClient(pacs.url, retries=0) as client:
        client._known[(SPEC.study_uid, SPEC.series_uid)] = 12  # as a search would have recorded
        np.testing.assert_array_equal(retrieve(client), expected_volume())
    accept = pacs.requests[-1]["Accept"]
    assert "transfer-syntax=*" in accept  # the stored transfer syntax, decoded here


def test_busy_pacs_answers_are_retried_with_backoff(pacs: FakePacs) -> None:
    pacs.fail_first = 2
    with PacsClient(pacs.url, retries=3, retry_backoff_s=0.01) as client:
        client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
        assert retrieve(client).shape == (12, 48, 48)
    assert len(pacs.requests) == 3


def test_a_pacs_that_stays_down_is_a_transient_error(pacs: FakePacs) -> None:
    pacs.fail_first = 10
    with PacsClient(pacs.url, retries=1, retry_backoff_s=0.01) as client:
        client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
        with pytest.raises(TransientError, match=f"study {SPEC.study_uid}: PACS retrieve failed"):
            retrieve(client)


def test_a_search_is_tried_as_many_times_as_configured_and_no_more(pacs: FakePacs) -> None:
    # One retry policy: the session's (IMAGING_CDS_DICOMWEB_RETRIES, with backoff); dicomweb-client's own retrying
    # (5 attempts over about 30 s) would multiply it and hold a job for half a minute per PACS call in an outage.
    pacs.fail_first = 10
    with (
        PacsClient(pacs.url, retries=1, retry_backoff_s=0.01) as client,
        pytest.raises(TransientError, match=f"study {SPEC.study_uid}: PACS search failed"),
    ):
        client.search_series(SPEC.study_uid)
    assert len(pacs.requests) == 2


def test_a_series_the_pacs_no_longer_has_is_not_analysable(pacs: FakePacs) -> None:
    with PacsClient(pacs.url, retries=0) as client:
        client._known[(SPEC.study_uid, "9.9")] = 1
        with pytest.raises(NotAnalyzableError, match="no longer holds"):
            list(client.iter_series(SPEC.study_uid, "9.9"))


def test_basic_and_bearer_auth(pacs: FakePacs) -> None:
    basic = "Basic " + base64.b64encode(b"reader:pw").decode()
    pacs.require = lambda auth: auth == basic
    with PacsClient(pacs.url, "reader", "pw", retries=0) as client:
        client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
        assert retrieve(client).shape[0] == 12
    pacs.require = lambda auth: auth == "Bearer abc.def"
    with PacsClient(pacs.url, auth=PacsAuth("bearer", token="abc.def"), retries=0) as client:
        client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
        assert retrieve(client).shape[0] == 12


def test_oauth2_client_credentials_token_is_cached_and_renewed_on_401(pacs: FakePacs) -> None:
    valid = {"Bearer token-1"}
    pacs.require = lambda auth: auth in valid
    auth = PacsAuth(
        "oauth2", token_url=pacs.url.replace("/dicom-web", "/token"), client_id="client-1", client_secret="s3cret"
    )
    with PacsClient(pacs.url, auth=auth, retries=0) as client:
        client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
        retrieve(client)
        retrieve(client)
        assert pacs.tokens_issued == 1  # cached
        valid.clear()
        valid.add("Bearer token-2")  # the PACS revoked the first token
        assert retrieve(client).shape[0] == 12
        assert pacs.tokens_issued == 2


def test_oauth2_with_wrong_client_secret_is_a_transient_error(pacs: FakePacs) -> None:
    auth = PacsAuth(
        "oauth2", token_url=pacs.url.replace("/dicom-web", "/token"), client_id="client-1", client_secret="x"
    )
    with PacsClient(pacs.url, auth=auth, retries=0) as client:
        client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
        with pytest.raises(TransientError, match="token endpoint"):
            retrieve(client)


def test_tls_with_the_hospitals_own_ca_and_refused_without_it(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
         "-days", "2", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    server = FakePacs(context)
    try:
        with PacsClient(server.url, tls=PacsTls(ca_file=str(cert)), retries=0) as client:
            client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
            assert retrieve(client).shape[0] == 12
        with PacsClient(server.url, retries=0) as client:  # the system trust store does not know this CA
            client._known[(SPEC.study_uid, SPEC.series_uid)] = 12
            with pytest.raises(TransientError, match="SSLError"):
                retrieve(client)
    finally:
        server.close()


def test_bad_auth_settings_are_refused_at_start() -> None:
    with pytest.raises(ValueError, match="token"):
        PacsAuth("bearer")
    with pytest.raises(ValueError, match="none, basic, bearer or oauth2"):
        PacsAuth("kerberos")
