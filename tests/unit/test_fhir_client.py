"""The FHIR client: connection reuse, If-None-Exist, what 401/403/409/412/429/5xx become, and SMART Backend Services
authentication (signed JWT assertion, RS384 and ES384, token cached until it expires)."""

from __future__ import annotations

import http.server
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from imaging_cds.config import Settings
from imaging_cds.errors import TransientError
from imaging_cds.fhir.client import FhirAuthError, FhirClient, FhirConflictError, FhirError, if_none_exist_header
from imaging_cds.fhir.smart import SmartBackendAuth, jwk_thumbprint, public_jwk

BASE = "https://ehr.example/fhir"
TOKEN_URL = "https://ehr.example/auth/token"
Handler = Callable[[httpx.Request], httpx.Response]


def outcome(status: int, code: str, text: str, **headers: str) -> httpx.Response:
    body = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": code, "diagnostics": text}]}
    return httpx.Response(status, json=body, headers=headers)


def client(handler: Handler, **kw: Any) -> FhirClient:
    waits: list[float] = []
    fhir = FhirClient(BASE, transport=httpx.MockTransport(handler), sleep=waits.append, **kw)
    fhir.waits = waits  # type: ignore[attr-defined]
    return fhir


# -- requests and errors ------------------------------------------------------------------------------------------


def test_a_conditional_create_sends_if_none_exist_as_a_search_query() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"resourceType": "Patient", "id": "7"})

    with client(handler) as fhir:
        fhir.create({"resourceType": "Patient"}, if_none_exist={"identifier": "urn:ietf:rfc:3986|urn:uuid:1 2"})
    (request,) = seen
    assert request.method == "POST" and request.url == f"{BASE}/Patient"
    assert request.headers["If-None-Exist"] == "identifier=urn:ietf:rfc:3986|urn:uuid:1+2"
    assert request.headers["Content-Type"] == "application/fhir+json"
    assert if_none_exist_header({"_tag": "a|b", "code": "x,y"}) == "_tag=a|b&code=x,y"


def test_an_update_with_if_match_sends_a_weak_etag() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"resourceType": "Patient", "id": "7"})

    with client(handler) as fhir:
        fhir.update({"resourceType": "Patient", "id": "7"}, if_match="3")
    assert seen[0].headers["If-Match"] == 'W/"3"'


def test_429_is_retried_after_the_servers_retry_after() -> None:
    answers = iter([outcome(429, "throttled", "slow down", **{"Retry-After": "2"}), httpx.Response(200, json={})])
    with client(lambda r: next(answers)) as fhir:
        assert fhir.search("Patient", {}) == []
        assert fhir.waits == [2.0]  # type: ignore[attr-defined]


def test_5xx_that_persists_becomes_a_transient_error_after_bounded_retries() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return outcome(503, "transient", "maintenance", **{"Retry-After": "600"})

    with client(handler) as fhir, pytest.raises(TransientError, match="503") as err:
        fhir.read("Patient/1")
    assert len(calls) == 3 and fhir.waits == [5.0, 5.0]  # type: ignore[attr-defined]
    assert not isinstance(err.value, FhirError)


def test_a_plain_create_is_not_repeated_on_5xx_but_a_conditional_transaction_is() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(502)

    with client(handler) as fhir:
        with pytest.raises(TransientError):
            fhir.create({"resourceType": "Patient"})
        assert len(calls) == 1
        conditional = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "POST", "url": "Device", "ifNoneExist": "identifier=a|b"}}],
        }
        with pytest.raises(TransientError):
            fhir.transaction(conditional)
        assert len(calls) == 4


@pytest.mark.parametrize(
    ("status", "code", "error", "transient"),
    [
        (401, "login", FhirAuthError, True),
        (403, "forbidden", FhirAuthError, True),
        (409, "conflict", FhirConflictError, True),
        (412, "conflict", FhirConflictError, True),
        (412, "multiple-matches", FhirError, False),
        (422, "processing", FhirError, False),
    ],
)
def test_error_statuses_say_what_happens_next(status: int, code: str, error: type, transient: bool) -> None:
    with client(lambda r: outcome(status, code, "details")) as fhir, pytest.raises(error) as raised:
        fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert isinstance(raised.value, TransientError) is transient
    assert f"HTTP {status}" in str(raised.value) and "details" in str(raised.value)


def test_a_refused_write_names_the_scopes_to_check() -> None:
    refused = outcome(403, "forbidden", "Token scopes ['system/*.rs'] do not permit 'c' on *")
    with client(lambda r: refused) as fhir, pytest.raises(FhirAuthError) as raised:
        fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
    assert (
        "system/*.rs" in str(raised.value) and "SMART scopes" in str(raised.value) and "will retry" in str(raised.value)
    )


class _KeepAliveFhir(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    peers: ClassVar[list[tuple[str, int]]] = []

    def do_GET(self) -> None:
        self.peers.append(self.client_address)
        body = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def keep_alive_server() -> Iterator[str]:
    _KeepAliveFhir.peers = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveFhir)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/fhir"
    finally:
        server.shutdown()
        server.server_close()


def test_the_client_reuses_one_connection(keep_alive_server: str) -> None:
    with FhirClient(keep_alive_server) as fhir:
        for _ in range(5):
            fhir.search("ImagingStudy", {"status": "available"})
    assert len(_KeepAliveFhir.peers) == 5 and len(set(_KeepAliveFhir.peers)) == 1


# -- SMART Backend Services -----------------------------------------------------------------------------------------


def _pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.fixture(scope="module", params=["RS384", "ES384"])
def signing_key(request: pytest.FixtureRequest) -> tuple[str, bytes]:
    if request.param == "RS384":
        return "RS384", _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    return "ES384", _pem(ec.generate_private_key(ec.SECP384R1()))


class FakeEhr:
    """A SMART Backend Services server and FHIR endpoint, checking the assertion as a real one would."""

    def __init__(self, public_key: Any, lifetime_s: int = 300, scope: str = "system/*.rs system/*.cud") -> None:
        self.public_key, self.lifetime_s, self.scope = public_key, lifetime_s, scope
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.forms: list[dict[str, str]] = []
        self.issued = 0
        self.valid: set[str] = set()
        self.fhir_answers: list[int] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == "/fhir/.well-known/smart-configuration":
            return httpx.Response(200, json={"token_endpoint": TOKEN_URL})
        if str(request.url) == TOKEN_URL:
            form = dict(urllib.parse.parse_qsl(request.content.decode()))
            self.forms.append(form)
            assertion = form["client_assertion"]
            header = jwt.get_unverified_header(assertion)
            # leeway: the tests move the client's clock up to five minutes ahead of the real one
            claims = jwt.decode(
                assertion, self.public_key, algorithms=["RS384", "ES384"], audience=TOKEN_URL, leeway=600
            )
            self.assertions.append((header, claims))
            self.issued += 1
            token = f"token-{self.issued}"
            self.valid.add(token)
            return httpx.Response(
                200,
                json={
                    "access_token": token,
                    "token_type": "bearer",
                    "expires_in": self.lifetime_s,
                    "scope": self.scope,
                },
            )
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        status = self.fhir_answers.pop(0) if self.fhir_answers else (200 if token in self.valid else 401)
        if status != 200:
            return outcome(status, "forbidden" if status == 403 else "login", f"token {token} refused")
        return httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset", "entry": []})


def smart(
    signing_key: tuple[str, bytes], ehr_factory: Callable[[Any], FakeEhr] = FakeEhr
) -> tuple[FhirClient, SmartBackendAuth, FakeEhr, list[float]]:
    algorithm, pem = signing_key
    public = serialization.load_pem_private_key(pem, password=None).public_key()
    ehr = ehr_factory(public)
    now = [time.time()]
    transport = httpx.MockTransport(ehr)
    auth = SmartBackendAuth(
        BASE, "imaging-cds", pem, "system/*.rs system/*.cud", transport=transport, clock=lambda: now[0]
    )
    assert auth.algorithm == algorithm
    return FhirClient(BASE, auth=auth, transport=transport, sleep=lambda s: None), auth, ehr, now


def test_the_client_asserts_its_identity_with_a_signed_jwt(signing_key: tuple[str, bytes]) -> None:
    fhir, _auth, ehr, now = smart(signing_key)
    with fhir:
        fhir.search("ImagingStudy", {})
    ((header, claims),) = ehr.assertions
    (form,) = ehr.forms
    assert form["grant_type"] == "client_credentials" and form["scope"] == "system/*.rs system/*.cud"
    assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert header["alg"] == signing_key[0] and header["typ"] == "JWT"
    assert header["kid"] == public_jwk(signing_key[1])["kid"]
    assert claims["iss"] == claims["sub"] == "imaging-cds" and claims["aud"] == TOKEN_URL
    assert 0 < claims["exp"] - now[0] <= 300 and len(claims["jti"]) >= 16


def test_the_token_is_cached_until_it_expires(signing_key: tuple[str, bytes]) -> None:
    fhir, _auth, ehr, now = smart(signing_key)
    with fhir:
        for _ in range(5):
            fhir.search("ImagingStudy", {})
        assert ehr.issued == 1
        now[0] += 250  # 300 s lifetime, renewed a little early
        fhir.search("ImagingStudy", {})
        assert ehr.issued == 1
        now[0] += 30
        fhir.search("ImagingStudy", {})
        assert ehr.issued == 2
    assert ehr.assertions[0][1]["jti"] != ehr.assertions[1][1]["jti"]


def test_a_rejected_token_is_replaced_once_and_the_request_repeated(signing_key: tuple[str, bytes]) -> None:
    fhir, _auth, ehr, _now = smart(signing_key)
    with fhir:
        fhir.search("ImagingStudy", {})
        ehr.valid.clear()  # the EHR restarted, or revoked the token
        assert fhir.search("ImagingStudy", {}) == []
        assert ehr.issued == 2


def test_a_forbidden_request_drops_the_token_so_the_next_one_asks_again(signing_key: tuple[str, bytes]) -> None:
    fhir, _auth, ehr, _now = smart(signing_key)
    with fhir:
        fhir.search("ImagingStudy", {})
        ehr.fhir_answers = [403]
        with pytest.raises(FhirAuthError, match="HTTP 403"):
            fhir.transaction({"resourceType": "Bundle", "type": "transaction", "entry": []})
        fhir.search("ImagingStudy", {})
        assert ehr.issued == 2


def test_a_refused_token_request_is_an_auth_error_that_names_the_client() -> None:
    pem = _pem(ec.generate_private_key(ec.SECP384R1()))

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client", "error_description": "Unknown client_id"})

    auth = SmartBackendAuth(
        BASE, "nobody", pem, "system/*.rs", token_url=TOKEN_URL, transport=httpx.MockTransport(handler)
    )
    with pytest.raises(FhirAuthError, match=r"client nobody refused .*invalid_client: Unknown client_id"):
        auth.token()


def test_keys_other_than_rsa_or_p384_are_refused() -> None:
    p256 = _pem(ec.generate_private_key(ec.SECP256R1()))
    with pytest.raises(ValueError, match=r"RSA .* or EC P-384"):
        SmartBackendAuth(BASE, "c", p256, "system/*.rs")
    rsa_pem = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    with pytest.raises(ValueError, match="does not fit the key"):
        SmartBackendAuth(BASE, "c", rsa_pem, "system/*.rs", algorithm="ES384")


def test_the_default_key_id_is_the_rfc7638_thumbprint() -> None:
    # RFC 7638 section 3.1's example key.
    n = (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMs"
        "tn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5h"
        "ajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw"
    )
    public = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps({"kty": "RSA", "n": n, "e": "AQAB"}))
    assert jwk_thumbprint(public) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def test_settings_turn_smart_on_and_check_what_it_needs(tmp_path: Any) -> None:
    key = tmp_path / "client.pem"
    key.write_bytes(_pem(ec.generate_private_key(ec.SECP384R1())))
    env = {
        "IMAGING_CDS_FHIR_URL": BASE,
        "IMAGING_CDS_FHIR_AUTH": "smart",
        "IMAGING_CDS_FHIR_SMART_CLIENT_ID": "imaging-cds",
        "IMAGING_CDS_FHIR_SMART_PRIVATE_KEY_FILE": str(key),
    }
    settings = Settings.from_env(env)
    with FhirClient.from_settings(settings) as fhir:
        assert isinstance(fhir.auth, SmartBackendAuth) and fhir.auth.algorithm == "ES384"
        assert "system/DiagnosticReport.crus" in fhir.auth.scope
    with FhirClient.from_settings(Settings.from_env({})) as fhir:
        assert fhir.auth is None
    with pytest.raises(ValueError, match="needs IMAGING_CDS_FHIR_SMART_CLIENT_ID"):
        Settings.from_env({"IMAGING_CDS_FHIR_AUTH": "smart"})
    with pytest.raises(ValueError, match="FHIR_AUTH must be one of"):
        Settings.from_env({"IMAGING_CDS_FHIR_AUTH": "basic"})
