"""JWT bearer tokens (PyJWT) -> Scope.

Exactly one algorithm is accepted: HS256 with REPORTING_JWT_SECRET, or RS256/ES256 (by the key's
type) when REPORTING_JWT_PUBLIC_KEY is set. Pinning it closes `alg: none` and HS/RS confusion.
"""

import time
import warnings
from collections import OrderedDict
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.warnings import InsecureKeyLengthWarning

from reporting.auth.scope import Scope
from reporting.errors import Unauthorized
from reporting.locales import LOCALES
from reporting.settings import AuthSettings

# A short REPORTING_JWT_SECRET is logged once at start (Settings.warnings); PyJWT's own warning
# said it again, unformatted, for every token signed or verified.
warnings.filterwarnings("ignore", category=InsecureKeyLengthWarning)

ROLES = ("admin", "teacher", "service")


def _algorithm_and_key(settings: AuthSettings) -> tuple[str, Any]:
    if settings.jwt_public_key:
        key = load_pem_public_key(settings.jwt_public_key.encode())
        if isinstance(key, rsa.RSAPublicKey):
            return "RS256", key
        if isinstance(key, ec.EllipticCurvePublicKey):
            return "ES256", key
        raise ValueError("REPORTING_JWT_PUBLIC_KEY must be an RSA or EC public key")
    if settings.jwt_secret is None:
        raise ValueError("REPORTING_JWT_SECRET or REPORTING_JWT_PUBLIC_KEY is required")
    return "HS256", settings.jwt_secret.get_secret_value()


def scope_from_claims(claims: dict[str, Any]) -> Scope:
    """Validate the service's own claims; raises Unauthorized naming the bad one."""
    sub, role, group_ids = claims.get("sub"), claims.get("role"), claims.get("group_ids", [])
    if not isinstance(sub, str) or not sub:
        raise Unauthorized("The token's sub claim must be a non-empty string.")
    if role not in ROLES:
        raise Unauthorized("The token's role claim must be admin, teacher or service.")
    if not isinstance(group_ids, list) or not all(isinstance(g, str) for g in group_ids):
        raise Unauthorized("The token's group_ids claim must be a list of strings.")
    email, locale = claims.get("email"), claims.get("locale")
    return Scope(
        role=role,
        sub=sub,
        group_ids=frozenset(group_ids),
        email=email if isinstance(email, str) and email else None,
        locale=locale if locale in LOCALES else None,
        # PyJWT has checked `exp` is a number (and required it)
        expires_at=float(claims["exp"]) if "exp" in claims else None,
    )


class TokenVerifier:
    """Verifies bearer tokens; remembers verified ones until they expire (the hot path)."""

    def __init__(self, settings: AuthSettings, *, cache_size: int = 4096) -> None:
        self.algorithm, self._key = _algorithm_and_key(settings)
        self.audience = settings.jwt_audience
        self.issuer = settings.jwt_issuer
        self._cache: OrderedDict[str, tuple[float, Scope]] = OrderedDict()
        self._cache_size = cache_size

    def verify(self, token: str) -> Scope:
        cached = self._cache.get(token)
        if cached is not None and cached[0] > time.time():
            return cached[1]
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self.algorithm],
                audience=self.audience,
                issuer=self.issuer,
                options={
                    "require": ["exp", "sub", "role"],
                    "verify_aud": self.audience is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("The token has expired.") from None
        except jwt.InvalidSignatureError:
            raise Unauthorized(
                "The token's signature does not verify (signed with another key?)."
            ) from None
        except jwt.DecodeError:
            # PyJWT's text here is its decoder's ("'utf-8' codec can't decode byte …").
            raise Unauthorized("The token is malformed: not a JWT this server can read.") from None
        except jwt.InvalidTokenError as error:  # a claim: PyJWT names it
            raise Unauthorized(f"The token is not valid: {error}.") from None
        for name in ("exp", "nbf", "iat"):
            # RFC 7519's NumericDate is a JSON number; PyJWT also takes "1796000000" (a string).
            value = claims.get(name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise Unauthorized(f"The token is not valid: {name} must be a number.")
        scope = scope_from_claims(claims)
        self._cache[token] = (float(claims["exp"]), scope)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return scope


def issue_token(
    settings: AuthSettings,
    *,
    role: str,
    sub: str,
    group_ids: list[str],
    ttl_seconds: int = 3600,
    email: str | None = None,
    locale: str | None = None,
) -> str:
    """Sign an HS256 token with REPORTING_JWT_SECRET (for demos, scripts and tests)."""
    if settings.jwt_public_key:
        # The API then verifies RS256/ES256 only: an HS256 token would be refused with 401.
        raise ValueError(
            "REPORTING_JWT_PUBLIC_KEY is set, so the API accepts only tokens signed with its"
            " private key (by the platform that issues them); unset it to sign HS256 tokens"
            " with REPORTING_JWT_SECRET"
        )
    if settings.jwt_secret is None:
        raise ValueError("REPORTING_JWT_SECRET is required to sign tokens")
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}")
    now = int(time.time())
    claims: dict[str, Any] = {
        "sub": sub,
        "role": role,
        "group_ids": group_ids,
        "iat": now,
        "exp": now + ttl_seconds,
    }
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if email:
        claims["email"] = email
    if locale:
        claims["locale"] = locale
    return jwt.encode(claims, settings.jwt_secret.get_secret_value(), algorithm="HS256")
