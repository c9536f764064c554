"""The EHR, over FHIR R4 REST (httpx): read and search resources, post transactions, manage our Subscription.

One ``FhirClient`` per EHR, configured once and shared: it keeps its connections open (httpx connection pool),
authenticates every request when given an ``httpx.Auth`` (``SmartBackendAuth`` for SMART Backend Services), and turns
HTTP failures into errors that say what happens next:

- 401/403: ``FhirAuthError`` (the EHR refused our credentials or scopes; transient: the job is retried, and an
  operator who fixes the client registration sees it go through);
- 409, and 412 from a version check (``If-Match``): ``FhirConflictError`` (someone else wrote first; retried, and the
  retry reads the new state);
- 408/429/502/503/504 and connection failures: retried here a few times, honouring ``Retry-After``, when the request
  is idempotent; then ``TransientError``;
- other 4xx, and 412 "multiple matches" from a conditional create: ``FhirError`` (a retry will not fix it).
"""

from __future__ import annotations

import contextlib
import email.utils
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import httpx

from imaging_cds.errors import TransientError

if TYPE_CHECKING:
    from imaging_cds.config import Settings

FHIR_JSON = "application/fhir+json"
RETRYABLE_STATUS = (408, 429, 502, 503, 504)


class FhirError(Exception):
    """The FHIR server refused a request for a reason a retry will not fix (4xx other than 401/403/408/409/429)."""


class FhirAuthError(TransientError, FhirError):
    """The FHIR server refused our credentials (401) or their scopes (403). Retried: access is fixed at the EHR."""


class FhirConflictError(TransientError, FhirError):
    """Another writer changed the resource first (409, or 412 from If-Match). Retried: the retry reads it again."""


class FhirClient:
    def __init__(
        self,
        base_url: str,
        timeout_s: float = 30.0,
        headers: dict[str, str] | None = None,
        auth: httpx.Auth | None = None,
        transport: httpx.BaseTransport | None = None,
        max_retries: int = 2,
        max_retry_wait_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self.max_retry_wait_s = max_retry_wait_s
        self._sleep = sleep
        self._auth = auth
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            headers={"Accept": FHIR_JSON, **(headers or {})},
            auth=auth,
            transport=transport,
        )

    @classmethod
    def from_settings(cls, settings: Settings) -> FhirClient:
        """The EHR named by the settings, with SMART Backend Services authentication when configured."""
        from imaging_cds.fhir.smart import auth_from_settings

        return cls(settings.fhir_url, settings.http_timeout_s, auth=auth_from_settings(settings))

    @property
    def auth(self) -> httpx.Auth | None:
        """The authentication in use (shared with other clients of the same EHR, e.g. the gateway's async one)."""
        return self._auth

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FhirClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def read(self, reference: str) -> dict[str, Any] | None:
        """GET Type/id; None when the server says 404/410."""
        response = self._send("GET", reference)
        if response.status_code in (404, 410):
            return None
        return self._json(response, f"read {reference}")

    def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """The resources of the first page: matches and, with ``_include``, the included ones."""
        bundle = self._json(self._send("GET", resource_type, params=params), f"search {resource_type}")
        return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]

    def search_all(self, resource_type: str, params: dict[str, str], max_pages: int = 100) -> Iterator[dict[str, Any]]:
        """Every match, following the Bundle's `next` links (at most max_pages pages)."""
        bundle = self._json(self._send("GET", resource_type, params=params), f"search {resource_type}")
        for _ in range(max_pages):
            yield from (e["resource"] for e in bundle.get("entry", []) if "resource" in e)
            next_url = next(
                (link.get("url") for link in bundle.get("link", []) if link.get("relation") == "next"), None
            )
            if not next_url:
                return
            bundle = self._json(self._send("GET", str(next_url)), f"search {resource_type} (next page)")

    def history(self, reference: str) -> list[dict[str, Any]]:
        """Every stored version of 'Type/id', newest first (GET Type/id/_history)."""
        bundle = self._json(self._send("GET", f"{reference}/_history"), f"history {reference}")
        return [e["resource"] for e in bundle.get("entry", []) if "resource" in e]

    def delete(self, reference: str) -> None:
        response = self._send("DELETE", reference)
        if response.status_code not in (200, 202, 204, 404, 410):
            _raise_for(response, f"delete {reference}")

    def create(self, resource: dict[str, Any], if_none_exist: Mapping[str, str] | None = None) -> dict[str, Any]:
        """POST the resource; with ``if_none_exist`` (search parameters), a conditional create: the server returns
        the one match instead of creating a second (200 instead of 201), and 412 when several match."""
        rtype = resource["resourceType"]
        headers = {}
        if if_none_exist:
            headers["If-None-Exist"] = if_none_exist_header(if_none_exist)
        return self._json(
            self._send("POST", rtype, json=resource, headers=headers, idempotent=bool(if_none_exist)), f"create {rtype}"
        )

    def update(self, resource: dict[str, Any], if_match: str | None = None) -> dict[str, Any]:
        """PUT Type/id; with ``if_match`` (a versionId or ETag) only if the stored version is still that one."""
        ref = f"{resource['resourceType']}/{resource['id']}"
        headers = {}
        if if_match:
            headers["If-Match"] = if_match if if_match.startswith(("W/", '"')) else f'W/"{if_match}"'
        return self._json(self._send("PUT", ref, json=resource, headers=headers), f"update {ref}")

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle. Retried on a busy server only when every entry is safe to repeat."""
        return self._json(self._send("POST", "", json=bundle, idempotent=_repeatable(bundle)), "transaction")

    # -- HTTP ------------------------------------------------------------------------------------------------------

    def _send(
        self,
        method: str,
        path: str,
        json: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
    ) -> httpx.Response:
        """One request, retried when the server is busy or unreachable and repeating it cannot do harm."""
        safe = method in ("GET", "HEAD", "PUT", "DELETE") if idempotent is None else idempotent
        request_headers = dict(headers or {})
        if json is not None:
            request_headers["Content-Type"] = FHIR_JSON
        where = f"FHIR server {self.base_url}: {method} {path or '/'}"
        for attempt in range(self.max_retries + 1):
            last = attempt == self.max_retries
            try:
                response = self._http.request(method, path, json=json, params=params, headers=request_headers)
            except httpx.TransportError as err:
                # A connection that never opened sent nothing, so it may always be tried again.
                if last or not (safe or isinstance(err, httpx.ConnectError)):
                    raise TransientError(f"{where}: unreachable ({type(err).__name__}); will retry") from err
                self._sleep(self._backoff(attempt, None))
                continue
            if not _busy(response.status_code):
                return response
            if last or not safe:
                break
            self._sleep(self._backoff(attempt, response))
        raise TransientError(f"{where} answered {response.status_code}: {_issue_text(response)}; will retry")

    def _backoff(self, attempt: int, response: httpx.Response | None) -> float:
        """Retry-After when the server gives one (seconds or an HTTP date), else 0.5 s doubling; capped."""
        wait = 0.5 * 2**attempt
        after = response.headers.get("Retry-After") if response is not None else None
        if after:
            if after.strip().isdigit():
                wait = float(after)
            else:
                with contextlib.suppress(TypeError, ValueError):
                    wait = email.utils.parsedate_to_datetime(after).timestamp() - time.time()
        return float(min(max(wait, 0.0), self.max_retry_wait_s))

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            _raise_for(response, what)
        body = response.json()
        if not isinstance(body, dict):
            raise FhirError(f"FHIR {what}: expected a JSON resource, got {type(body).__name__}")
        return body


def if_none_exist_header(params: Mapping[str, str]) -> str:
    """The If-None-Exist header: a search URL's query part without '?', e.g.
    ``identifier=urn:ietf:rfc:3986|urn:uuid:...``. Values are percent-encoded except for the characters FHIR
    search syntax uses as they are (``:``, ``|``, ``/``, ``,``, ``$``)."""
    return urllib.parse.urlencode(params, safe=":|/,$")


def _busy(status: int) -> bool:
    """A status that says: not now, try again (not 501 Not Implemented, which will not change)."""
    return status in RETRYABLE_STATUS or (status >= 500 and status != 501)


def _repeatable(bundle: dict[str, Any]) -> bool:
    """True when posting the transaction twice is the same as once: every entry reads, updates or creates
    conditionally."""
    for entry in bundle.get("entry") or []:
        request = entry.get("request") or {}
        method = str(request.get("method", "")).upper()
        if method == "POST" and not request.get("ifNoneExist"):
            return False
        if method not in ("POST", "PUT", "GET", "HEAD", "DELETE"):
            return False
    return True


def _raise_for(response: httpx.Response, what: str) -> None:
    status, text = response.status_code, _issue_text(response)
    if status in (401, 403):
        raise FhirAuthError(
            f"FHIR {what} refused by the EHR (HTTP {status}: {text}); check imaging-cds's credentials and SMART "
            "scopes at the EHR (see IMAGING_CDS_FHIR_SMART_*); will retry"
        )
    if status == 409 or (status == 412 and "multiple-matches" not in _issue_codes(response)):
        raise FhirConflictError(f"FHIR {what}: HTTP {status} (written by someone else meanwhile: {text}); will retry")
    raise FhirError(f"FHIR {what}: HTTP {status}: {text}")


def _issue_codes(response: httpx.Response) -> set[str]:
    try:
        body = response.json()
    except ValueError:
        return set()
    issues = body.get("issue", []) if isinstance(body, dict) else []
    return {str(i.get("code")) for i in issues if isinstance(i, dict)}


def _issue_text(response: httpx.Response) -> str:
    """The OperationOutcome's diagnostics, which name resources and codes, not patients; else the status."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    issues = body.get("issue", []) if isinstance(body, dict) else []
    texts = [str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code")) for i in issues]
    if not texts and isinstance(body, dict) and body.get("error"):  # an OAuth error answer
        texts = [f"{body.get('error')}: {body.get('error_description', '')}"]
    return "; ".join(texts)[:500] or response.reason_phrase
