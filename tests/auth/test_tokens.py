"""JWT hardening: every forged, broken or foreign token is 401 with `WWW-Authenticate: Bearer`
and problem+json; RS256 and ES256 keys work when configured (CONTRACT §5)."""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from reporting.auth.tokens import TokenVerifier
from reporting.errors import Unauthorized
from reporting.settings import AuthSettings
from tests.conftest import JWT_SECRET, api_client, make_settings

# An authenticated admin asking for an unknown group gets 404: proof that the token passed.
PROTECTED = "/stats/groups/no-such-group"
PASSED = 404


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(obj: dict[str, Any]) -> str:
    return _b64(json.dumps(obj, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid admin claims; an override of None removes the claim."""
    now = int(time.time())
    base: dict[str, Any] = {"sub": "admin-1", "role": "admin", "group_ids": [], "iat": now}
    base["exp"] = now + 600
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def unsigned(payload: dict[str, Any], alg: str = "none") -> str:
    return f"{_segment({'alg': alg, 'typ': 'JWT'})}.{_segment(payload)}."


def hmac_by_hand(payload: dict[str, Any], secret: bytes, alg: str = "HS256") -> str:
    """HMAC-signed without PyJWT (which refuses PEM-looking secrets): the attacker's tool."""
    signing_input = f"{_segment({'alg': alg, 'typ': 'JWT'})}.{_segment(payload)}"
    digest = {"HS256": hashlib.sha256, "HS512": hashlib.sha512}[alg]
    signature = hmac.new(secret, signing_input.encode(), digest).digest()
    return f"{signing_input}.{_b64(signature)}"


def hs256(payload: dict[str, Any], secret: str = JWT_SECRET) -> str:
    return jwt.encode(payload, secret, algorithm="HS256")


def _public_pem(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
async def hs_api(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_settings(db_url), db_url) as client:
        yield client


@pytest.fixture(scope="module")
async def rs_api(db_url: str, rsa_key: rsa.RSAPrivateKey) -> AsyncIterator[httpx.AsyncClient]:
    auth = AuthSettings(REPORTING_JWT_PUBLIC_KEY=_public_pem(rsa_key))
    async with api_client(make_settings(db_url, auth=auth), db_url) as client:
        yield client


@pytest.fixture(scope="module")
async def es_api(
    db_url: str, ec_key: ec.EllipticCurvePrivateKey
) -> AsyncIterator[httpx.AsyncClient]:
    auth = AuthSettings(REPORTING_JWT_PUBLIC_KEY=_public_pem(ec_key))
    async with api_client(make_settings(db_url, auth=auth), db_url) as client:
        yield client


@pytest.fixture(scope="module")
async def aud_api(db_url: str) -> AsyncIterator[httpx.AsyncClient]:
    auth = AuthSettings(
        REPORTING_JWT_SECRET=JWT_SECRET,
        REPORTING_JWT_AUDIENCE="reporting",
        REPORTING_JWT_ISSUER="https://id.school.example",
    )
    async with api_client(make_settings(db_url, auth=auth), db_url) as client:
        yield client


async def _get(client: httpx.AsyncClient, authorization: str | None) -> httpx.Response:
    headers = {} if authorization is None else {"Authorization": authorization}
    return await client.get(PROTECTED, headers=headers)


def assert_unauthorized(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert set(problem) == {"type", "title", "status", "detail"}
    assert problem["status"] == 401


HS_ATTACKS: dict[str, Callable[[], str]] = {
    "alg none": lambda: unsigned(claims()),
    "alg None": lambda: unsigned(claims(), alg="None"),
    "alg none with a signature": lambda: unsigned(claims()) + _b64(b"sig"),
    "wrong secret": lambda: hs256(claims(), secret="another-secret-of-32-characters!"),
    "HS512 with the right secret": lambda: hmac_by_hand(claims(), JWT_SECRET.encode(), "HS512"),
    "expired": lambda: hs256(claims(exp=int(time.time()) - 5)),
    "missing exp": lambda: hs256(claims(exp=None)),
    "exp not a number": lambda: hs256(claims(exp="tomorrow")),
    "exp a numeric string": lambda: hs256(claims(exp=str(int(time.time()) + 600))),
    "exp a boolean": lambda: hs256(claims(exp=True)),
    "iat a numeric string": lambda: hs256(claims(iat=str(int(time.time())))),
    "not yet valid": lambda: hs256(claims(nbf=int(time.time()) + 600)),
    "missing sub": lambda: hs256(claims(sub=None)),
    "empty sub": lambda: hs256(claims(sub="")),
    "missing role": lambda: hs256(claims(role=None)),
    "unknown role": lambda: hs256(claims(role="superuser")),
    "system role": lambda: hs256(claims(role="system")),
    "group_ids a string": lambda: hs256(claims(role="teacher", group_ids="g1")),
    "group_ids of numbers": lambda: hs256(claims(role="teacher", group_ids=[1, 2])),
    "group_ids an object": lambda: hs256(claims(role="teacher", group_ids={"g1": True})),
    "tampered payload": lambda: _tampered(),
    "garbage": lambda: "garbage",
    "three garbage segments": lambda: "abc.def.ghi",
    "empty signature": lambda: hs256(claims()).rsplit(".", 1)[0] + ".",
}


def _tampered() -> str:
    header, _, signature = hs256(claims(role="teacher", group_ids=["g1"])).split(".")
    return f"{header}.{_segment(claims())}.{signature}"


@pytest.mark.parametrize("attack", sorted(HS_ATTACKS))
async def test_forged_or_broken_tokens_are_401(hs_api: httpx.AsyncClient, attack: str) -> None:
    response = await _get(hs_api, f"Bearer {HS_ATTACKS[attack]()}")

    assert_unauthorized(response)


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic YWRtaW46YWRtaW4=", "Token abc"],
    ids=["missing", "empty", "no-token", "blank-token", "basic", "other-scheme"],
)
async def test_missing_or_non_bearer_authorization_is_401(
    hs_api: httpx.AsyncClient, authorization: str | None
) -> None:
    response = await _get(hs_api, authorization)

    assert_unauthorized(response)
    assert response.headers["www-authenticate"] == "Bearer"


async def test_a_valid_hs256_token_passes(hs_api: httpx.AsyncClient) -> None:
    response = await _get(hs_api, f"Bearer {hs256(claims())}")
    lowercase_scheme = await _get(hs_api, f"bearer {hs256(claims())}")

    assert response.status_code == lowercase_scheme.status_code == PASSED


async def test_a_refused_token_gets_the_bearer_challenge_and_says_why(
    hs_api: httpx.AsyncClient,
) -> None:
    expired = await _get(hs_api, f"Bearer {hs256(claims(exp=int(time.time()) - 5))}")
    missing = await _get(hs_api, None)

    # CONTRACT §5: "401 with `WWW-Authenticate: Bearer`", for every reason
    assert expired.headers["www-authenticate"] == missing.headers["www-authenticate"] == "Bearer"
    assert expired.json()["detail"] == "The token has expired."
    assert missing.json()["detail"] == "A bearer token is required: Authorization: Bearer <JWT>."
    # Why, in words for the caller: not the decoder's own ("'utf-8' codec can't decode byte")
    garbage = await _get(hs_api, "Bearer abc.def.ghi")
    assert garbage.json()["detail"] == "The token is malformed: not a JWT this server can read."
    forged = await _get(hs_api, f"Bearer {_tampered()}")
    assert forged.json()["detail"] == (
        "The token's signature does not verify (signed with another key?)."
    )


async def test_hs_rs_confusion_is_401(
    rs_api: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    public_pem = _public_pem(rsa_key).encode()
    forged = hmac_by_hand(claims(), public_pem)
    forged_der = hmac_by_hand(
        claims(),
        rsa_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )

    assert_unauthorized(await _get(rs_api, f"Bearer {forged}"))
    assert_unauthorized(await _get(rs_api, f"Bearer {forged_der}"))
    assert_unauthorized(await _get(rs_api, f"Bearer {hs256(claims())}"))
    assert_unauthorized(await _get(rs_api, f"Bearer {unsigned(claims())}"))


async def test_rs256_happy_path_and_foreign_key(
    rs_api: httpx.AsyncClient, rsa_key: rsa.RSAPrivateKey
) -> None:
    good = jwt.encode(claims(), rsa_key, algorithm="RS256")
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    foreign = jwt.encode(claims(), other, algorithm="RS256")
    pss = jwt.encode(claims(), rsa_key, algorithm="PS256")

    assert (await _get(rs_api, f"Bearer {good}")).status_code == PASSED
    assert_unauthorized(await _get(rs_api, f"Bearer {foreign}"))
    assert_unauthorized(await _get(rs_api, f"Bearer {pss}"))


async def test_es256_happy_path_and_other_algorithms(
    es_api: httpx.AsyncClient, ec_key: ec.EllipticCurvePrivateKey, rsa_key: rsa.RSAPrivateKey
) -> None:
    good = jwt.encode(claims(), ec_key, algorithm="ES256")
    teacher = jwt.encode(claims(role="teacher", group_ids=["g1"]), ec_key, algorithm="ES256")
    rs = jwt.encode(claims(), rsa_key, algorithm="RS256")
    confused = hmac_by_hand(claims(), _public_pem(ec_key).encode())

    assert (await _get(es_api, f"Bearer {good}")).status_code == PASSED
    assert (await _get(es_api, f"Bearer {teacher}")).status_code == 403
    assert_unauthorized(await _get(es_api, f"Bearer {rs}"))
    assert_unauthorized(await _get(es_api, f"Bearer {confused}"))


@pytest.mark.parametrize(
    ("overrides", "passes"),
    [
        ({"aud": "reporting", "iss": "https://id.school.example"}, True),
        ({"aud": ["other", "reporting"], "iss": "https://id.school.example"}, True),
        ({"iss": "https://id.school.example"}, False),
        ({"aud": "other", "iss": "https://id.school.example"}, False),
        ({"aud": "reporting"}, False),
        ({"aud": "reporting", "iss": "https://evil.example"}, False),
    ],
    ids=["both", "aud-list", "no-aud", "wrong-aud", "no-iss", "wrong-iss"],
)
async def test_audience_and_issuer_are_checked_when_configured(
    aud_api: httpx.AsyncClient, overrides: dict[str, Any], passes: bool
) -> None:
    response = await _get(aud_api, f"Bearer {hs256(claims(**overrides))}")

    if passes:
        assert response.status_code == PASSED
    else:
        assert_unauthorized(response)


def test_remembered_tokens_still_expire() -> None:
    verifier = TokenVerifier(AuthSettings(REPORTING_JWT_SECRET=JWT_SECRET))
    exp = int(time.time()) + 1
    token = hs256(claims(exp=exp))

    assert verifier.verify(token).role == "admin"
    time.sleep(max(0.0, exp - time.time()) + 0.05)
    with pytest.raises(Unauthorized, match="expired"):
        verifier.verify(token)


def test_verified_scope_carries_the_claims() -> None:
    verifier = TokenVerifier(AuthSettings(REPORTING_JWT_SECRET=JWT_SECRET))

    scope = verifier.verify(
        hs256(claims(role="teacher", group_ids=["g2", "g1"], email="t@school.example", locale="en"))
    )

    assert (scope.role, scope.sub, scope.group_ids) == (
        "teacher",
        "admin-1",
        frozenset({"g1", "g2"}),
    )
    assert (scope.email, scope.locale) == ("t@school.example", "en")


# --- reporting token ------------------------------------------------------------------------------


def _reporting_token(
    tmp_path: Path, *options: str, **variables: str
) -> subprocess.CompletedProcess[str]:
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), **variables}
    command = [str(Path(sys.executable).parent / "reporting"), "token"]
    return subprocess.run(
        [*command, "--role", "teacher", "--groups", "g1,g2", "--sub", "t-1", *options],
        env=env,
        cwd=tmp_path,  # no .env of the checkout
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_reporting_token_prints_a_token_the_api_accepts(tmp_path: Path) -> None:
    done = _reporting_token(tmp_path, REPORTING_JWT_SECRET=JWT_SECRET)

    assert done.returncode == 0, done.stderr
    scope = TokenVerifier(AuthSettings(REPORTING_JWT_SECRET=JWT_SECRET)).verify(done.stdout.strip())
    assert (scope.role, scope.sub, scope.group_ids) == ("teacher", "t-1", frozenset({"g1", "g2"}))


@pytest.mark.parametrize(
    ("ttl", "reason"),
    [
        ("-5", "must be greater than 0"),
        ("0", "must be greater than 0"),
        ("1h", "not a whole number"),
    ],
)
def test_reporting_token_refuses_a_lifetime_that_is_not_positive(
    tmp_path: Path, ttl: str, reason: str
) -> None:
    done = _reporting_token(tmp_path, "--ttl", ttl, REPORTING_JWT_SECRET=JWT_SECRET)

    assert done.returncode == 2
    assert done.stdout == ""  # no token that is expired on arrival
    assert f"argument --ttl: {reason}" in done.stderr


def test_reporting_token_refuses_to_sign_what_the_api_would_refuse(
    tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """With a public key set the API verifies RS256/ES256 only: an HS256 token would be a 401."""
    done = _reporting_token(
        tmp_path, REPORTING_JWT_SECRET=JWT_SECRET, REPORTING_JWT_PUBLIC_KEY=_public_pem(rsa_key)
    )

    assert done.returncode == 2
    assert done.stdout == ""
    assert "REPORTING_JWT_PUBLIC_KEY is set" in done.stderr
