"""SMART Backend Services authorization (SMART App Launch 2.x, "Backend Services"): how a system with no user
signs in to the EHR.

The client asks the EHR's token endpoint (``token_endpoint`` in ``{fhir}/.well-known/smart-configuration``, or
configured) for an access token with the ``client_credentials`` grant, authenticating with a JWT it signs with its
private key (``private_key_jwt``: RS384 for an RSA key, ES384 for an EC P-384 key; the EHR holds the public key).
The token is cached until shortly before it expires and sent as ``Authorization: Bearer``. A 401 answer (expired or
revoked token) gets one new token and one more try; a 403 (the token's scopes do not allow the request) drops the
token, so the next request asks again and sees scopes an administrator has changed meanwhile.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import threading
import time
from collections.abc import AsyncGenerator, Callable, Generator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import httpx
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imaging_cds.errors import TransientError
from imaging_cds.fhir.client import FhirAuthError

if TYPE_CHECKING:
    from imaging_cds.config import Settings

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_LIFETIME_S = 240  # SMART: "exp" at most five minutes ahead; a little less allows for clock skew
SUPPORTED_ALGORITHMS = ("RS384", "ES384")  # the two SMART Backend Services asks every server to accept


@dataclass(frozen=True)
class AccessToken:
    value: str
    scope: str
    expires_at: float  # time.time() seconds


class SmartBackendAuth(httpx.Auth):
    """An ``httpx.Auth`` that adds a SMART Backend Services bearer token to every request, cached until expiry."""

    def __init__(
        self,
        fhir_base_url: str,
        client_id: str,
        private_key_pem: bytes,
        scope: str,
        token_url: str = "",
        key_id: str = "",
        algorithm: str = "",
        timeout_s: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.client_id = client_id
        self.scope = " ".join(scope.split())
        self._key = serialization.load_pem_private_key(private_key_pem, password=None)
        self.algorithm = algorithm or _algorithm_for(self._key)
        if self.algorithm not in SUPPORTED_ALGORITHMS or self.algorithm != _algorithm_for(self._key):
            raise ValueError(
                f"SMART client {client_id}: algorithm {self.algorithm} does not fit the key "
                f"(RS384 needs an RSA key, ES384 an EC P-384 key)"
            )
        self.key_id = key_id or jwk_thumbprint(self._key)
        self._token_url = token_url
        self._http = httpx.Client(timeout=httpx.Timeout(timeout_s, connect=5.0), transport=transport)
        self._clock = clock
        self._lock = threading.Lock()
        self._token: AccessToken | None = None
        self.tokens_fetched = 0

    # -- httpx.Auth ------------------------------------------------------------------------------------------------

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        token = self.token()
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code == 401:
            self.invalidate(token)
            request.headers["Authorization"] = f"Bearer {self.token().value}"
            yield request
        elif response.status_code == 403:
            self.invalidate(token)

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        """The same for an ``httpx.AsyncClient``; a token fetch runs in a worker thread, not on the event loop."""
        token = await anyio.to_thread.run_sync(self.token)
        request.headers["Authorization"] = f"Bearer {token.value}"
        response = yield request
        if response.status_code == 401:
            self.invalidate(token)
            fresh = await anyio.to_thread.run_sync(self.token)
            request.headers["Authorization"] = f"Bearer {fresh.value}"
            yield request
        elif response.status_code == 403:
            self.invalidate(token)

    # -- tokens ----------------------------------------------------------------------------------------------------

    def token(self) -> AccessToken:
        """The cached token while it has a little life left, else a new one from the token endpoint."""
        with self._lock:
            if self._token is None or self._clock() >= self._token.expires_at:
                self._token = self._fetch()
            return self._token

    def invalidate(self, token: AccessToken | None = None) -> None:
        with self._lock:
            if token is None or self._token is token:
                self._token = None

    def close(self) -> None:
        self._http.close()

    @property
    def token_url(self) -> str:
        if not self._token_url:
            self._token_url = self._discover()
        return self._token_url

    def client_assertion(self) -> str:
        """The signed JWT that authenticates this client at the token endpoint (used once: a fresh ``jti``)."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": self.token_url,
            "exp": now + ASSERTION_LIFETIME_S,
            "iat": now,
            "jti": secrets.token_hex(16),
        }
        return jwt.encode(
            claims,
            self._key,  # type: ignore[arg-type]
            algorithm=self.algorithm,
            headers={"kid": self.key_id, "typ": "JWT"},
        )

    def _fetch(self) -> AccessToken:
        url = self.token_url
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": CLIENT_ASSERTION_TYPE,
            "client_assertion": self.client_assertion(),
        }
        try:
            response = self._http.post(url, data=form, headers={"Accept": "application/json"})
        except httpx.TransportError as err:
            raise TransientError(f"SMART token endpoint {url} unreachable ({type(err).__name__}); will retry") from err
        body = _json_or_empty(response)
        if response.status_code >= 500 or response.status_code == 429:
            raise TransientError(f"SMART token endpoint {url} answered {response.status_code}; will retry")
        if response.status_code != 200 or not body.get("access_token"):
            raise FhirAuthError(
                f"SMART token request for client {self.client_id} refused by {url} (HTTP {response.status_code}: "
                f"{body.get('error', '?')}: {str(body.get('error_description', ''))[:300]}); check the client's "
                "registration (client id, public key, scopes) at the EHR; will retry"
            )
        lifetime = float(body.get("expires_in") or 300)
        margin = min(60.0, lifetime / 10.0)  # renew a little early, so a token never expires in flight
        self.tokens_fetched += 1
        return AccessToken(
            value=str(body["access_token"]),
            scope=str(body.get("scope", self.scope)),
            expires_at=self._clock() + lifetime - margin,
        )

    def _discover(self) -> str:
        url = f"{self.fhir_base_url}/.well-known/smart-configuration"
        try:
            response = self._http.get(url, headers={"Accept": "application/json"})
        except httpx.TransportError as err:
            raise TransientError(f"SMART configuration {url} unreachable ({type(err).__name__}); will retry") from err
        endpoint = _json_or_empty(response).get("token_endpoint")
        if response.status_code != 200 or not isinstance(endpoint, str) or not endpoint:
            if response.status_code >= 500:
                raise TransientError(f"SMART configuration {url} answered {response.status_code}; will retry")
            raise FhirAuthError(
                f"{url} names no token_endpoint (HTTP {response.status_code}); set IMAGING_CDS_FHIR_SMART_TOKEN_URL"
            )
        return endpoint


def auth_from_settings(settings: Settings) -> SmartBackendAuth | None:
    """SMART Backend Services when ``fhir_auth`` is "smart", else None (no authentication)."""
    if settings.fhir_auth != "smart":
        return None
    return SmartBackendAuth(
        settings.fhir_url,
        settings.fhir_smart_client_id,
        Path(settings.fhir_smart_private_key_file).read_bytes(),
        settings.fhir_smart_scope,
        token_url=settings.fhir_smart_token_url,
        key_id=settings.fhir_smart_key_id,
        algorithm=settings.fhir_smart_algorithm,
        timeout_s=settings.http_timeout_s,
    )


def public_jwk(private_key_pem: bytes, key_id: str = "") -> dict[str, Any]:
    """The public key as a JWK (for the EHR's registration of this client, e.g. in a JWKS)."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    jwk = _public_members(key)
    algorithm = _algorithm_for(key)
    return {**jwk, "alg": algorithm, "use": "sig", "kid": key_id or jwk_thumbprint(key)}


def jwk_thumbprint(key: Any) -> str:
    """RFC 7638 thumbprint of the public key: the default ``kid``."""
    members = _public_members(key)
    canonical = json.dumps(members, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(hashlib.sha256(canonical).digest()).rstrip(b"=").decode()


def _public_members(key: Any) -> dict[str, str]:
    public = key.public_key() if isinstance(key, (rsa.RSAPrivateKey, ec.EllipticCurvePrivateKey)) else key
    if isinstance(public, rsa.RSAPublicKey):
        numbers = public.public_numbers()
        return {"e": _b64_int(numbers.e), "kty": "RSA", "n": _b64_int(numbers.n)}
    if isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp384r1":
        point = public.public_numbers()
        return {"crv": "P-384", "kty": "EC", "x": _b64_int(point.x, 48), "y": _b64_int(point.y, 48)}
    raise ValueError("SMART Backend Services keys are RSA (RS384) or EC P-384 (ES384)")


def _algorithm_for(key: Any) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        return "RS384"
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1":
        return "ES384"
    raise ValueError("SMART Backend Services keys are RSA (RS384) or EC P-384 (ES384)")


def _b64_int(value: int, length: int = 0) -> str:
    raw = value.to_bytes(length or (value.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _json_or_empty(response: httpx.Response) -> dict[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}
