"""The PACS, over DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store).

One ``PacsClient`` per PACS: configured once (base URL, authentication, TLS, timeouts, retries), its HTTP session
reused across studies, closed by ``close()``.

- Authentication: HTTP basic, a static bearer token, or OAuth2 client credentials (the token is fetched from the
  token endpoint, cached until shortly before it expires, and fetched again once when the PACS answers 401).
- TLS: the system's trust store, a CA bundle of the hospital's own, or none (``verify=False``, for tests only);
  an optional client certificate for mutual TLS.
- Timeouts: connect and read, per request. Retries: connection errors and 429/502/503/504 on GET requests, with
  exponential backoff that honours Retry-After; a failure after that is a TransientError (the job is retried).
- Retrieval: a series is asked for in its stored transfer syntax (``transfer-syntax=*``; transcoding on the server
  is slower, and Orthanc cannot transcode JPEG 2000 at all) and streamed: each part of the multipart response is
  read straight into one reused buffer (``Content-Length`` of the part, else by boundary) and handed on as bytes,
  so memory stays at one instance however long the series.
"""

from __future__ import annotations

import io
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import pydicom
import requests
from dicomweb_client.api import DICOMwebClient
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from imaging_cds.dicomweb.series import SeriesSummary, orientation_name, split_multi_value
from imaging_cds.errors import NotAnalyzableError, TransientError

__all__ = ["PacsAuth", "PacsClient", "PacsTls", "SeriesStream", "SeriesSummary"]

_ANY_TRANSFER_SYNTAX = (("application/dicom", "*"),)
_SERIES_FIELDS = ("Modality", "BodyPartExamined", "SeriesDescription", "NumberOfSeriesRelatedInstances")
# From one representative instance: what series rules need beyond the series level.
_INSTANCE_FIELDS = ("ImageType", "SliceThickness", "ImageOrientationPatient", "NumberOfFrames")
_RETRIEVE_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_RETRY_STATUS = (429, 502, 503, 504)


@dataclass(frozen=True)
class PacsAuth:
    """How to authenticate to the PACS: ``kind`` is none, basic, bearer or oauth2 (client credentials)."""

    kind: str = "none"
    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)
    token_url: str = ""
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    scope: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("none", "basic", "bearer", "oauth2"):
            raise ValueError(f"PACS auth must be none, basic, bearer or oauth2; got {self.kind!r}")
        if self.kind == "bearer" and not self.token:
            raise ValueError("bearer auth needs a token")
        if self.kind == "oauth2" and not (self.token_url and self.client_id):
            raise ValueError("oauth2 client credentials need a token URL and a client id")


@dataclass(frozen=True)
class PacsTls:
    """TLS to the PACS. ``ca_file``: a PEM bundle to trust instead of the system's; ``verify=False`` only for
    tests; ``client_cert_file`` / ``client_key_file``: a client certificate for mutual TLS."""

    verify: bool = True
    ca_file: str = ""
    client_cert_file: str = ""
    client_key_file: str = ""


class SeriesStream:
    """The instances of one series as the PACS sends them, each as Part 10 bytes.

    Each item is a memoryview valid until the next one is taken (the buffer is reused): decode it, or copy it,
    before asking for the next. ``expected_images`` is the image count QIDO-RS announced (0 when unknown), so
    the volume can be allocated once.
    """

    def __init__(self, parts: Iterator[memoryview], expected_images: int) -> None:
        self._parts = parts
        self.expected_images = expected_images

    def __iter__(self) -> Iterator[memoryview]:
        return self._parts


class PacsClient:
    def __init__(
        self,
        url: str,
        username: str = "",
        password: str = "",
        timeout_s: float = 30.0,
        *,
        auth: PacsAuth | None = None,
        tls: PacsTls | None = None,
        connect_timeout_s: float = 5.0,
        retries: int = 3,
        retry_backoff_s: float = 0.5,
    ) -> None:
        self.url = url.rstrip("/")
        if auth is None:
            auth = PacsAuth("basic", username, password) if username else PacsAuth()
        self._session = requests.Session()
        self._session.auth = _requests_auth(auth, self._session, (connect_timeout_s, timeout_s))
        tls = tls or PacsTls()
        self._session.verify = tls.ca_file or tls.verify
        if tls.ca_file or not tls.verify:
            # requests lets REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE override a session's trust: an explicit setting wins.
            self._session.trust_env = False
        if tls.client_cert_file:
            self._session.cert = (
                (tls.client_cert_file, tls.client_key_file) if tls.client_key_file else tls.client_cert_file
            )
        retry = Retry(
            total=retries,
            connect=retries,
            read=retries,
            status=retries,
            status_forcelist=_RETRY_STATUS,
            allowed_methods=frozenset({"GET", "HEAD"}),
            backoff_factor=retry_backoff_s,
            respect_retry_after_header=True,
            raise_on_status=False,
        )
        adapter = HTTPAdapter(max_retries=retry, pool_maxsize=4)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._timeout = (connect_timeout_s, timeout_s)
        self._dicomweb = DICOMwebClient(self.url, session=self._session, timeout=self._timeout)
        # One retry policy, the session's above: dicomweb-client would otherwise retry every failed request again
        # (5 attempts over about 30 s, on any exception), multiplying it and holding a job for half a minute per
        # call while the PACS is down, whatever IMAGING_CDS_DICOMWEB_RETRIES says.
        self._dicomweb.set_http_retry_params(retry=False)
        self._known: dict[tuple[str, str], int] = {}

    @classmethod
    def from_settings(cls, settings: Any) -> PacsClient:
        """The PACS of ``imaging_cds.config.Settings`` (``IMAGING_CDS_DICOMWEB_*``)."""
        kind = settings.dicomweb_auth or ("basic" if settings.dicomweb_username else "none")
        auth = PacsAuth(
            kind=kind,
            username=settings.dicomweb_username,
            password=settings.dicomweb_password,
            token=settings.dicomweb_bearer_token,
            token_url=settings.dicomweb_oauth_token_url,
            client_id=settings.dicomweb_oauth_client_id,
            client_secret=settings.dicomweb_oauth_client_secret,
            scope=settings.dicomweb_oauth_scope,
        )
        tls = PacsTls(
            verify=settings.dicomweb_tls_verify,
            ca_file=settings.dicomweb_ca_file,
            client_cert_file=settings.dicomweb_client_cert_file,
            client_key_file=settings.dicomweb_client_key_file,
        )
        return cls(
            settings.dicomweb_url,
            timeout_s=settings.http_timeout_s,
            auth=auth,
            tls=tls,
            connect_timeout_s=settings.dicomweb_connect_timeout_s,
            retries=settings.dicomweb_retries,
        )

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- QIDO-RS ------------------------------------------------------------------------------------------------

    def search_series(self, study_uid: str, describe: bool = True) -> list[SeriesSummary]:
        """The study's series; empty when the PACS does not know the study.

        With ``describe``, each series also gets the instance-level facts series rules look at (image type, slice
        thickness, orientation, frames) from one of its instances: one more small QIDO-RS request per series.
        """
        try:
            found = self._dicomweb.search_for_series(study_instance_uid=study_uid, fields=_SERIES_FIELDS)
        except requests.HTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                return []
            raise _transient(study_uid, "search", err) from err
        except requests.RequestException as err:
            raise _transient(study_uid, "search", err) from err
        summaries = [_summary(pydicom.Dataset.from_json(item)) for item in found]
        if describe:
            summaries = [self._describe(study_uid, s) for s in summaries]
        for s in summaries:
            self._known[(study_uid, s.series_uid)] = s.n_images
        return summaries

    def _describe(self, study_uid: str, s: SeriesSummary) -> SeriesSummary:
        try:
            found = self._dicomweb.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=s.series_uid, fields=_INSTANCE_FIELDS, limit=1
            )
        except requests.HTTPError as err:
            if err.response is not None and err.response.status_code == 404:
                return s
            raise _transient(study_uid, "search", err) from err
        except requests.RequestException as err:
            raise _transient(study_uid, "search", err) from err
        if not found:
            return s
        ds = pydicom.Dataset.from_json(found[0])
        thickness = ds.get("SliceThickness")
        frames = ds.get("NumberOfFrames")
        return SeriesSummary(
            series_uid=s.series_uid,
            modality=s.modality,
            body_part=s.body_part,
            description=s.description,
            n_instances=s.n_instances,
            image_type=split_multi_value(ds.get("ImageType")),
            slice_thickness_mm=float(thickness) if thickness not in (None, "") else None,
            orientation=orientation_name([float(v) for v in ds.get("ImageOrientationPatient") or []]),
            frames_per_instance=int(frames) if frames not in (None, "") else 1,
        )

    # -- WADO-RS ------------------------------------------------------------------------------------------------

    def iter_series(self, study_uid: str, series_uid: str) -> SeriesStream:
        """Each instance of the series as it arrives (stored transfer syntax, Part 10 bytes), in the PACS's order."""
        expected = self._known.get((study_uid, series_uid))
        if expected is None:
            found = self.search_series(study_uid, describe=False)
            expected = next((s.n_images for s in found if s.series_uid == series_uid), 0)
        url = f"{self.url}/studies/{study_uid}/series/{series_uid}"
        return SeriesStream(self._stream_parts(study_uid, url), expected)

    def retrieve_bytes(self, study_uid: str, series_uid: str) -> Iterator[memoryview]:
        """The raw multipart response of a series, chunk by chunk (for measuring what the PACS can deliver)."""
        response = self._get_stream(study_uid, f"{self.url}/studies/{study_uid}/series/{series_uid}")
        with response:
            source = _body(response)
            buf = bytearray(1 << 20)
            view = memoryview(buf)
            while True:
                n = source.readinto(view)  # type: ignore[attr-defined]
                if not n:
                    return
                yield view[:n]

    def _get_stream(self, study_uid: str, url: str) -> requests.Response:
        headers = {"Accept": _RETRIEVE_ACCEPT, "Accept-Encoding": "identity"}
        try:
            response = self._session.get(url, headers=headers, stream=True, timeout=self._timeout)
        except requests.RequestException as err:
            raise _transient(study_uid, "retrieve", err) from err
        if response.status_code == 404:
            response.close()
            raise NotAnalyzableError(study_uid, f"the PACS no longer holds the series at {url}")
        if response.status_code >= 400:
            response.close()
            raise _transient(study_uid, "retrieve", requests.HTTPError(f"HTTP {response.status_code}"))
        return response

    def _stream_parts(self, study_uid: str, url: str) -> Iterator[memoryview]:
        response = self._get_stream(study_uid, url)
        try:
            boundary = _boundary(response.headers.get("Content-Type", ""))
            if boundary is None:
                raise _transient(study_uid, "retrieve", ValueError("response is not multipart/related"))
            # A reader thread takes the parts off the socket (the GIL is released while it waits) into a few
            # buffers, while the caller decodes the previous ones.
            yield from _read_ahead(_body(response), boundary)
        except (requests.RequestException, OSError) as err:
            raise _transient(study_uid, "retrieve", err) from err
        except MultipartError as err:
            raise _transient(study_uid, "retrieve", err) from err
        finally:
            response.close()

    # -- STOW-RS ------------------------------------------------------------------------------------------------

    def store(self, datasets: Iterable[pydicom.Dataset]) -> None:
        """STOW-RS; used by operators' tools and tests to load a PACS."""
        self._dicomweb.store_instances(list(datasets))


class MultipartError(ValueError):
    """The multipart/related body is malformed."""


def _body(response: requests.Response) -> BinaryIO:
    """The response body as a file: the http.client response itself when nothing needs decoding (its readinto
    goes straight from the socket into our buffer), else urllib3's decoding reader."""
    raw = response.raw
    inner = getattr(raw, "_fp", None)
    if inner is not None and not response.headers.get("Content-Encoding") and hasattr(inner, "readinto"):
        return inner  # type: ignore[no-any-return]
    return io.BufferedReader(raw, 1 << 16)


def _boundary(content_type: str) -> bytes | None:
    if not content_type.lower().startswith("multipart/"):
        return None
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary":
            return value.strip().strip('"').encode("ascii")
    return None


class _Buffers:
    """Part buffers: ``get(n)`` a view of n bytes, ``release`` it for reuse; at most ``count`` in use at once."""

    def __init__(self, count: int) -> None:
        self._free: queue.SimpleQueue[bytearray] = queue.SimpleQueue()
        for _ in range(count):
            self._free.put(bytearray(0))

    def get(self, n: int) -> tuple[bytearray, memoryview]:
        buf = self._free.get()
        if len(buf) < n:
            buf = bytearray(n)
        return buf, memoryview(buf)[:n]

    def release(self, buf: bytearray) -> None:
        self._free.put(buf)


def _read_ahead(body: BinaryIO, boundary: bytes, depth: int = 3) -> Iterator[memoryview]:
    """``_parts`` in a reader thread, ``depth`` parts ahead of the caller; errors are raised in the caller."""
    buffers = _Buffers(depth + 1)
    ready: queue.SimpleQueue[tuple[bytearray, memoryview] | BaseException | None] = queue.SimpleQueue()
    stop = threading.Event()

    def reader() -> None:
        try:
            for item in _parts(body, boundary, buffers):
                if stop.is_set():
                    return
                ready.put(item)
            ready.put(None)
        except BaseException as err:  # handed to the caller's thread
            ready.put(err)

    thread = threading.Thread(target=reader, name="wado-reader", daemon=True)
    thread.start()
    previous: bytearray | None = None
    try:
        while True:
            item = ready.get()
            if previous is not None:
                buffers.release(previous)
                previous = None
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            previous, view = item
            yield view
    finally:
        stop.set()
        if previous is not None:
            buffers.release(previous)
        for _ in range(depth + 1):
            buffers.release(bytearray(0))  # unblock a reader waiting for a buffer
        body.close()
        thread.join(timeout=5)


def _parts(body: BinaryIO, boundary: bytes, buffers: _Buffers) -> Iterator[tuple[bytearray, memoryview]]:
    """Bodies of the parts of a multipart/related stream (RFC 2046), each in a buffer from ``buffers``."""
    delimiter = b"--" + boundary
    line = body.readline(1 << 16)
    while line and line.rstrip(b"\r\n") != delimiter:  # preamble
        if line.rstrip(b"\r\n") == delimiter + b"--":
            return
        line = body.readline(1 << 16)
    if not line:
        return
    while True:
        length = -1
        while True:  # part headers
            header = body.readline(1 << 16)
            if not header:
                raise MultipartError("stream ended inside part headers")
            if header in (b"\r\n", b"\n"):
                break
            name, _, value = header.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        if length >= 0:
            buf, view = buffers.get(length)
            _read_exactly(body, view)
            yield buf, view
            tail = body.readline(1 << 16)
            if tail in (b"\r\n", b"\n"):
                tail = body.readline(1 << 16)
        else:
            acc, tail = _read_to_delimiter(body, delimiter)
            yield acc, memoryview(acc)[: len(acc) - 2]
        closing = tail.rstrip(b"\r\n")
        if closing == delimiter + b"--" or not tail:
            return
        if closing != delimiter:
            raise MultipartError("part not followed by the boundary")


def _read_exactly(body: BinaryIO, view: memoryview) -> None:
    got = 0
    while got < len(view):
        n = body.readinto(view[got:])  # type: ignore[attr-defined]
        if not n:
            raise MultipartError(f"stream ended {len(view) - got} bytes before the end of a part")
        got += n


def _read_to_delimiter(body: BinaryIO, delimiter: bytes) -> tuple[bytearray, bytes]:
    """A part without Content-Length: lines up to the next boundary line (the part ends with the CRLF before it)."""
    acc = bytearray()
    while True:
        line = body.readline(1 << 20)
        if not line:
            raise MultipartError("stream ended inside a part")
        if line.startswith(delimiter) and acc.endswith(b"\r\n"):
            return acc, line
        acc += line


def _requests_auth(auth: PacsAuth, session: requests.Session, timeout: tuple[float, float]) -> Any:
    if auth.kind == "basic":
        return requests.auth.HTTPBasicAuth(auth.username, auth.password)
    if auth.kind == "bearer":
        return _BearerAuth(lambda: auth.token)
    if auth.kind == "oauth2":
        return _OAuth2ClientCredentials(auth, timeout)
    return None


class _BearerAuth(requests.auth.AuthBase):
    def __init__(self, token: Any) -> None:
        self._token = token

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self._token()}"
        return r


class _OAuth2ClientCredentials(requests.auth.AuthBase):
    """OAuth2 client credentials (RFC 6749 4.4): a token cached until 30 s before it expires; on a 401 the token is
    fetched again and the request sent once more."""

    def __init__(self, auth: PacsAuth, timeout: tuple[float, float]) -> None:
        self._auth = auth
        self._timeout = timeout
        self._token = ""
        self._expires = 0.0
        self._lock = threading.Lock()
        self._tokens = requests.Session()  # the token endpoint is another server: its own connections

    def token(self, refresh: bool = False) -> str:
        with self._lock:
            if refresh or not self._token or time.monotonic() >= self._expires:
                self._token, self._expires = self._fetch()
            return self._token

    def _fetch(self) -> tuple[str, float]:
        data = {"grant_type": "client_credentials"}
        if self._auth.scope:
            data["scope"] = self._auth.scope
        try:
            reply = self._tokens.post(
                self._auth.token_url,
                data=data,
                auth=(self._auth.client_id, self._auth.client_secret),
                headers={"Accept": "application/json"},
                timeout=self._timeout,
            )
            reply.raise_for_status()
            body = reply.json()
        except (requests.RequestException, ValueError) as err:
            raise TransientError(
                f"PACS OAuth2 token endpoint {self._auth.token_url} failed ({type(err).__name__}); will retry"
            ) from err
        token = str(body.get("access_token", ""))
        if not token:
            raise TransientError(f"PACS OAuth2 token endpoint {self._auth.token_url} returned no access_token")
        lifetime = float(body.get("expires_in", 300) or 300)
        return token, time.monotonic() + max(0.0, lifetime - 30.0)

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        r.headers["Authorization"] = f"Bearer {self.token()}"
        r.register_hook("response", self._on_response)  # type: ignore[no-untyped-call]
        return r

    def _on_response(self, response: requests.Response, **kwargs: Any) -> requests.Response:
        if response.status_code != 401 or getattr(response.request, "_retried_with_new_token", False):
            return response
        response.content  # noqa: B018  (release the connection)
        response.close()
        request = response.request.copy()
        request.headers["Authorization"] = f"Bearer {self.token(refresh=True)}"
        request._retried_with_new_token = True  # type: ignore[attr-defined]
        assert response.connection is not None
        retried: requests.Response = response.connection.send(request, **kwargs)
        retried.history.append(response)
        return retried


def _summary(ds: pydicom.Dataset) -> SeriesSummary:
    return SeriesSummary(
        series_uid=str(ds.get("SeriesInstanceUID", "")),
        modality=str(ds.get("Modality", "")),
        body_part=str(ds.get("BodyPartExamined", "")),
        description=str(ds.get("SeriesDescription", "")),
        n_instances=int(ds.get("NumberOfSeriesRelatedInstances", 0) or 0),
    )


def _transient(study_uid: str, what: str, err: Exception) -> TransientError:
    return TransientError(
        f"study {study_uid}: PACS {what} failed ({type(err).__name__}: {err}); the job will be retried"
    )
