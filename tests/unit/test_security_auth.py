"""API keys: parsing, route classes, and who may call what."""

from __future__ import annotations

import pytest

from fraudserve.errors import Forbidden, Unauthorized
from fraudserve.security.auth import (
    DEV_PRINCIPAL,
    Access,
    KeyStore,
    SecurityConfigError,
    access_for,
    bearer_token,
    parse_keys,
)
from fraudserve.settings import Settings

PREDICT_KEY = "p" * 20
OTHER_PREDICT_KEY = "q" * 24
ADMIN_KEY = "a" * 32


def bearer(key: str) -> str:
    return f"Bearer {key}"


@pytest.mark.parametrize(
    ("raw", "keys"),
    [
        ("", ()),
        ("   ", ()),
        (f"{PREDICT_KEY}", (PREDICT_KEY,)),
        (f" {PREDICT_KEY} , {OTHER_PREDICT_KEY},", (PREDICT_KEY, OTHER_PREDICT_KEY)),
        (f'["{PREDICT_KEY}", "{OTHER_PREDICT_KEY}"]', (PREDICT_KEY, OTHER_PREDICT_KEY)),
    ],
)
def test_keys_are_comma_separated_or_a_json_list(raw: str, keys: tuple[str, ...]) -> None:
    assert parse_keys(raw, variable="FRAUD_API_KEYS") == keys


@pytest.mark.parametrize(
    "raw", ["short", f"{PREDICT_KEY},tiny", '["unterminated', '{"a": 1}', "[1, 2]", "has space inside key"]
)
def test_bad_key_configuration_refuses_to_start_naming_the_variable(raw: str) -> None:
    with pytest.raises(SecurityConfigError, match="FRAUD_API_KEYS"):
        parse_keys(raw, variable="FRAUD_API_KEYS")


def test_keys_come_from_settings_and_are_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_API_KEYS", f"{PREDICT_KEY},{OTHER_PREDICT_KEY}")
    monkeypatch.setenv("FRAUD_ADMIN_API_KEYS", f'["{ADMIN_KEY}"]')
    settings = Settings()
    assert PREDICT_KEY not in repr(settings) and ADMIN_KEY not in str(settings.model_dump())
    store = KeyStore.from_settings(settings)
    assert store.predict_protected and store.admin_enabled
    assert store.authorize(Access.ADMIN, bearer(ADMIN_KEY)).admin  # type: ignore[union-attr]
    with pytest.raises(Forbidden):
        store.authorize(Access.ADMIN, bearer(OTHER_PREDICT_KEY))


@pytest.mark.parametrize(
    ("path", "access"),
    [
        ("/livez", Access.OPEN),
        ("/readyz", Access.OPEN),
        ("/metrics", Access.OPEN),
        ("/docs.json", Access.OPEN),
        ("/v2/health/ready", Access.OPEN),
        ("/static_content/swagger-ui.css", Access.OPEN),
        ("/predict", Access.PREDICT),
        ("/model", Access.PREDICT),
        ("/v2/models/fraud/infer", Access.PREDICT),
        ("/v2", Access.PREDICT),
        ("/anything-added-later", Access.PREDICT),
        ("/readyz/extra", Access.PREDICT),
        ("/admin", Access.ADMIN),
        ("/admin/rollout", Access.ADMIN),
        ("/administrator", Access.PREDICT),
    ],
)
def test_routes_are_default_deny(path: str, access: Access) -> None:
    assert access_for(path) is access


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("", None),
        ("Bearer", None),
        ("Bearer   ", None),
        ("Basic abc", None),
        ("Bearer abc", "abc"),
        ("bearer  abc ", "abc"),
    ],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


def test_without_keys_predict_routes_are_open_and_admin_is_disabled() -> None:
    store = KeyStore()
    assert store.authorize(Access.PREDICT, None) is None
    assert store.authorize(Access.PREDICT, bearer("not-a-configured-key")) is None
    with pytest.raises(Forbidden, match="FRAUD_ADMIN_API_KEYS"):
        store.authorize(Access.ADMIN, None)
    assert "DISABLED" in store.describe()


def test_dev_mode_opens_admin_only_while_no_admin_key_is_set() -> None:
    assert KeyStore(dev_mode=True).authorize(Access.ADMIN, None) is DEV_PRINCIPAL
    with pytest.raises(Unauthorized):
        KeyStore(admin_keys=[ADMIN_KEY], dev_mode=True).authorize(Access.ADMIN, None)


def test_predict_keys_are_required_once_configured() -> None:
    store = KeyStore([PREDICT_KEY, OTHER_PREDICT_KEY], [ADMIN_KEY])
    with pytest.raises(Unauthorized, match="missing"):
        store.authorize(Access.PREDICT, None)
    with pytest.raises(Unauthorized, match="unknown"):
        store.authorize(Access.PREDICT, bearer(PREDICT_KEY + "x"))
    with pytest.raises(Unauthorized):
        store.authorize(Access.PREDICT, f"Basic {PREDICT_KEY}")
    first = store.authorize(Access.PREDICT, bearer(PREDICT_KEY))
    second = store.authorize(Access.PREDICT, bearer(OTHER_PREDICT_KEY))
    admin = store.authorize(Access.PREDICT, bearer(ADMIN_KEY))
    assert first is not None and second is not None and admin is not None
    assert first.key_id != second.key_id and not first.admin and admin.admin
    assert PREDICT_KEY not in first.key_id
    assert store.authorize(Access.OPEN, None) is None


def test_admin_routes_need_an_admin_key() -> None:
    store = KeyStore([PREDICT_KEY], [ADMIN_KEY])
    with pytest.raises(Unauthorized):
        store.authorize(Access.ADMIN, None)
    with pytest.raises(Forbidden, match="admin right"):
        store.authorize(Access.ADMIN, bearer(PREDICT_KEY))
    principal = store.authorize(Access.ADMIN, bearer(ADMIN_KEY))
    assert principal is not None and principal.admin


def test_admin_keys_alone_leave_predict_open() -> None:
    store = KeyStore(admin_keys=[ADMIN_KEY])
    assert not store.predict_protected
    assert store.authorize(Access.PREDICT, None) is None
