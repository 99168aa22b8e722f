"""Bearer API keys: which routes need which key, and a constant-time check of the key sent.

Keys come from settings (``FRAUD_API_KEYS``, ``FRAUD_ADMIN_API_KEYS``), comma-separated or a
JSON list. Only their SHA-256 digests are kept in memory; a presented key is hashed and compared
with every digest by ``hmac.compare_digest``, so neither the match position nor the key length
shows in the timing. A key is identified in logs and rate limits by a short digest prefix.

Route classes, default-deny: every path not listed as open is a predict route, so a route added
later is protected without anyone remembering to list it.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass

from starlette.types import ASGIApp, Receive, Scope, Send

from fraudserve.errors import Forbidden, FraudServeError, Unauthorized
from fraudserve.security.asgi import PRINCIPAL_SCOPE_KEY, header, is_http, send_error
from fraudserve.settings import Settings

log = logging.getLogger(__name__)

# Long enough that guessing is hopeless within any rate limit; `openssl rand -hex 32` gives 64.
MIN_KEY_CHARS = 16

OPEN_PATHS = frozenset(
    {
        "/",
        "/livez",
        "/healthz",
        "/readyz",
        "/metrics",
        "/docs",
        "/docs.json",
        "/schema.json",
        "/v2/health/live",
        "/v2/health/ready",
    }
)
OPEN_PREFIXES = ("/static_content/", "/assets/")
ADMIN_PREFIX = "/admin"


class Access(enum.Enum):
    OPEN = "open"
    PREDICT = "predict"
    ADMIN = "admin"


def access_for(path: str) -> Access:
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return Access.OPEN
    if path == ADMIN_PREFIX or path.startswith(ADMIN_PREFIX + "/"):
        return Access.ADMIN
    return Access.PREDICT


class SecurityConfigError(ValueError):
    """Keys or limits configured so that the service must not start."""


@dataclass(frozen=True)
class Principal:
    """Who called: ``key_id`` is a digest prefix (never the key), ``admin`` its right."""

    key_id: str
    admin: bool


DEV_PRINCIPAL = Principal(key_id="dev-mode", admin=True)


def parse_keys(raw: str, *, variable: str) -> tuple[str, ...]:
    """``a,b`` or ``["a", "b"]`` -> the keys; refuses empty-looking or short keys by name."""
    text = raw.strip()
    if not text:
        return ()
    if text.startswith("["):
        try:
            values = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SecurityConfigError(f"{variable}: not a valid JSON list ({exc.msg})") from None
        if not isinstance(values, list) or not all(isinstance(v, str) for v in values):
            raise SecurityConfigError(f"{variable}: a JSON value must be a list of strings")
        keys = [v.strip() for v in values]
    else:
        keys = [part.strip() for part in text.split(",")]
    keys = [k for k in keys if k]
    for position, key in enumerate(keys):
        if len(key) < MIN_KEY_CHARS or any(ch.isspace() for ch in key):
            raise SecurityConfigError(
                f"{variable}: key #{position + 1} must be at least {MIN_KEY_CHARS} characters without spaces"
            )
    return tuple(keys)


def key_digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_id(digest: bytes) -> str:
    return digest.hex()[:12]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` value, else None."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class KeyStore:
    """The configured keys and the one decision: may this caller use this route?"""

    def __init__(self, predict_keys: Iterable[str] = (), admin_keys: Iterable[str] = (), *, dev_mode: bool = False):
        self._predict = tuple(key_digest(k) for k in predict_keys)
        self._admin = tuple(key_digest(k) for k in admin_keys)
        self.dev_mode = dev_mode

    @classmethod
    def from_settings(cls, settings: Settings) -> KeyStore:
        store = cls(
            parse_keys(settings.api_keys.get_secret_value(), variable="FRAUD_API_KEYS"),
            parse_keys(settings.admin_api_keys.get_secret_value(), variable="FRAUD_ADMIN_API_KEYS"),
            dev_mode=settings.dev_mode,
        )
        log.info("security: %s", store.describe())
        return store

    @property
    def predict_protected(self) -> bool:
        return bool(self._predict)

    @property
    def admin_enabled(self) -> bool:
        return bool(self._admin) or self.dev_mode

    def describe(self) -> str:
        predict = f"{len(self._predict)} predict key(s)" if self._predict else "predict routes OPEN (no FRAUD_API_KEYS)"
        if self._admin:
            admin = f"{len(self._admin)} admin key(s)"
        elif self.dev_mode:
            admin = "admin routes OPEN (FRAUD_DEV_MODE, no FRAUD_ADMIN_API_KEYS)"
        else:
            admin = "admin routes DISABLED (no FRAUD_ADMIN_API_KEYS)"
        return f"{predict}; {admin}"

    def identify(self, token: str | None) -> Principal | None:
        """The principal of a known key, else None; compares against every digest in constant time."""
        if token is None:
            return None
        digest = key_digest(token)
        is_admin = _matches(digest, self._admin)
        is_predict = _matches(digest, self._predict)
        if not (is_admin or is_predict):
            return None
        return Principal(key_id=key_id(digest), admin=is_admin)

    def authorize(self, access: Access, authorization: str | None) -> Principal | None:
        """The caller's principal (None: anonymous, allowed), or Unauthorized / Forbidden."""
        if access is Access.OPEN:
            return None
        token = bearer_token(authorization)
        if access is Access.PREDICT:
            if not self._predict:
                return self.identify(token)
            return self._require(token)
        if not self._admin:
            if self.dev_mode:
                return DEV_PRINCIPAL
            raise Forbidden(
                "the admin API is disabled: set FRAUD_ADMIN_API_KEYS (or FRAUD_DEV_MODE=true in development)"
            )
        principal = self._require(token)
        if not principal.admin:
            raise Forbidden("this API key has no admin right")
        return principal

    def _require(self, token: str | None) -> Principal:
        if token is None:
            raise Unauthorized("missing API key: send `Authorization: Bearer <key>`")
        principal = self.identify(token)
        if principal is None:
            raise Unauthorized("unknown API key")
        return principal


def _matches(digest: bytes, digests: tuple[bytes, ...]) -> bool:
    found = False
    for candidate in digests:
        found |= hmac.compare_digest(digest, candidate)
    return found


class AuthMiddleware:
    """Rejects requests without the key their route needs (401/403); records who called."""

    def __init__(self, app: ASGIApp, *, keys: KeyStore) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if is_http(scope):
            try:
                principal = self.keys.authorize(access_for(scope["path"]), header(scope, b"authorization"))
            except FraudServeError as exc:
                await send_error(send, exc)
                return
            scope[PRINCIPAL_SCOPE_KEY] = principal
        await self.app(scope, receive, send)
