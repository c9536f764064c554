"""The EHR, over FHIR R4 REST (httpx): read resources, post transactions, manage our Subscription."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from imaging_cds.errors import TransientError

FHIR_JSON = "application/fhir+json"


class FhirError(Exception):
    """The FHIR server refused a request for a reason a retry will not fix (4xx other than 408/429)."""


class FhirClient:
    def __init__(self, base_url: str, timeout_s: float = 30.0, headers: dict[str, str] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.base_url + "/",
            timeout=httpx.Timeout(timeout_s, connect=5.0),
            headers={"Accept": FHIR_JSON, **(headers or {})},
        )

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

    def delete(self, reference: str) -> None:
        response = self._send("DELETE", reference)
        if response.status_code not in (200, 202, 204, 404, 410):
            raise FhirError(f"FHIR delete {reference}: HTTP {response.status_code}: {_issue_text(response)}")

    def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        rtype = resource["resourceType"]
        return self._json(self._send("POST", rtype, json=resource), f"create {rtype}")

    def update(self, resource: dict[str, Any]) -> dict[str, Any]:
        ref = f"{resource['resourceType']}/{resource['id']}"
        return self._json(self._send("PUT", ref, json=resource), f"update {ref}")

    def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        return self._json(self._send("POST", "", json=bundle), "transaction")

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        if "json" in kwargs:
            kwargs["headers"] = {"Content-Type": FHIR_JSON}
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as err:
            raise TransientError(f"FHIR server {self.base_url} unreachable ({type(err).__name__}); will retry") from err
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise TransientError(
                f"FHIR server {self.base_url}: {method} {path or '/'} answered {response.status_code}; will retry"
            )
        return response

    @staticmethod
    def _json(response: httpx.Response, what: str) -> dict[str, Any]:
        if response.status_code >= 400:
            raise FhirError(f"FHIR {what}: HTTP {response.status_code}: {_issue_text(response)}")
        body = response.json()
        if not isinstance(body, dict):
            raise FhirError(f"FHIR {what}: expected a JSON resource, got {type(body).__name__}")
        return body


def _issue_text(response: httpx.Response) -> str:
    """The OperationOutcome's diagnostics, which name resources and codes, not patients; else the status."""
    try:
        body = response.json()
    except ValueError:
        return response.reason_phrase
    issues = body.get("issue", []) if isinstance(body, dict) else []
    texts = [str(i.get("diagnostics") or (i.get("details") or {}).get("text") or i.get("code")) for i in issues]
    return "; ".join(texts)[:500] or response.reason_phrase
