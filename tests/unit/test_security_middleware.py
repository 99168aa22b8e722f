"""The ASGI security stack on a small Starlette app, spoken to over real ASGI (httpx)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from fraudserve.security import Guards, middleware
from fraudserve.security.auth import KeyStore
from fraudserve.security.ratelimit import TokenBucketLimiter
from fraudserve.settings import Settings

KEY = "k" * 24
ADMIN_KEY = "a" * 24
AUTH = {"authorization": f"Bearer {KEY}"}

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class App:
    """Routes shaped like the service's: a predict route, a slow one, admin, and a probe."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0
        self.bodies_read: list[int] = []

    async def predict(self, request: Request) -> JSONResponse:
        body = await request.body()
        self.bodies_read.append(len(body))
        return JSONResponse({"bytes": len(body)})

    async def slow(self, request: Request) -> PlainTextResponse:
        self.entered += 1
        await self.release.wait()
        return PlainTextResponse("done")

    async def ok(self, request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    def build(self, settings: Settings, guards: Guards) -> Starlette:
        routes = [
            Route("/predict", self.predict, methods=["POST"]),
            Route("/slow", self.slow),
            Route("/admin/state", self.ok),
            Route("/livez", self.ok),
        ]
        return Starlette(routes=routes, middleware=[Middleware(c, **o) for c, o in middleware(settings, guards)])


def client(app: Starlette) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test", timeout=10)


def make(settings: Settings | None = None, *, keys: KeyStore | None = None, rps: float = 0.0) -> tuple[App, Starlette]:
    settings = settings or Settings()
    limiter = TokenBucketLimiter(rps, 2) if rps else None
    guards = Guards(keys=keys or KeyStore(), limiter=limiter)
    routes = App()
    return routes, routes.build(settings, guards)


async def test_auth_statuses_and_error_bodies() -> None:
    _, app = make(keys=KeyStore([KEY], [ADMIN_KEY]))
    async with client(app) as http:
        missing = await http.post("/predict", content=b"{}")
        assert missing.status_code == 401
        assert missing.json()["error"] == "unauthorized" and "Bearer" in missing.json()["message"]
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert (
            await http.post("/predict", content=b"{}", headers={"authorization": "Bearer wrong-key"})
        ).status_code == 401
        assert (await http.post("/predict", content=b"{}", headers=AUTH)).status_code == 200
        assert (await http.get("/livez")).status_code == 200
        forbidden = await http.get("/admin/state", headers=AUTH)
        assert forbidden.status_code == 403 and forbidden.json()["error"] == "forbidden"
        assert (await http.get("/admin/state", headers={"authorization": f"Bearer {ADMIN_KEY}"})).status_code == 200
        assert (await http.get("/nowhere")).status_code == 401  # default-deny before routing


async def test_admin_routes_are_disabled_without_a_key_unless_dev_mode() -> None:
    _, app = make()
    async with client(app) as http:
        assert (await http.post("/predict", content=b"{}")).status_code == 200
        disabled = await http.get("/admin/state")
        assert disabled.status_code == 403 and "FRAUD_ADMIN_API_KEYS" in disabled.json()["message"]
    _, dev = make(keys=KeyStore(dev_mode=True))
    async with client(dev) as http:
        assert (await http.get("/admin/state")).status_code == 200


async def test_declared_body_over_the_limit_is_413_unread() -> None:
    routes, app = make(Settings(max_request_body_bytes=1024))
    async with client(app) as http:
        assert (await http.post("/predict", content=b"x" * 1024)).json() == {"bytes": 1024}
        big = await http.post("/predict", content=b"x" * 1025)
        assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
        bad = await http.post("/predict", content=b"{}", headers={"content-length": "-3"})
        assert bad.status_code == 400
    assert routes.bodies_read == [1024]


async def chunks(n: int, size: int) -> AsyncIterator[bytes]:
    for _ in range(n):
        yield b"y" * size


async def test_streamed_body_is_cut_off_at_the_limit() -> None:
    routes, app = make(Settings(max_request_body_bytes=4096))
    async with client(app) as http:
        small = await http.post("/predict", content=chunks(4, 1000))
        assert small.status_code == 200 and small.json() == {"bytes": 4000}
        big = await http.post("/predict", content=chunks(100, 1000))
        assert big.status_code == 413 and big.json()["error"] == "payload_too_large"
    assert routes.bodies_read == [4000]


async def test_inflight_cap_sheds_at_once_with_retry_after_and_probes_still_answer() -> None:
    routes, app = make(Settings(max_inflight_requests=2))
    async with client(app) as http:
        held = [asyncio.create_task(http.get("/slow")) for _ in range(2)]
        while routes.entered < 2:
            await asyncio.sleep(0.01)
        shed = await asyncio.wait_for(http.get("/slow"), timeout=1)
        assert shed.status_code == 503 and shed.headers["retry-after"] == "1"
        assert shed.json()["error"] == "unavailable"
        assert (await http.get("/livez")).status_code == 200
        routes.release.set()
        assert [r.status_code for r in await asyncio.gather(*held)] == [200, 200]
        assert (await http.get("/slow")).status_code == 200  # the slots were given back


async def test_deadline_answers_504_and_frees_the_slot() -> None:
    routes, app = make(Settings(request_timeout_s=0.2, max_inflight_requests=1))
    async with client(app) as http:
        late = await asyncio.wait_for(http.get("/slow"), timeout=5)
        assert late.status_code == 504 and late.json()["error"] == "timeout"
        routes.release.set()
        assert (await http.get("/slow")).status_code == 200


async def test_rate_limit_per_client_with_retry_after() -> None:
    _, app = make(keys=KeyStore([KEY, "m" * 24]), rps=0.5)
    async with client(app) as http:
        statuses = [(await http.post("/predict", content=b"{}", headers=AUTH)).status_code for _ in range(3)]
        assert statuses == [200, 200, 429]
        limited = await http.post("/predict", content=b"{}", headers=AUTH)
        assert limited.json()["error"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
        other = {"authorization": f"Bearer {'m' * 24}"}
        assert (await http.post("/predict", content=b"{}", headers=other)).status_code == 200
        assert (await http.get("/livez")).status_code == 200  # probes never spend tokens
        unauthenticated = await http.post("/predict", content=b"{}")
        assert unauthenticated.status_code == 401  # auth runs first: no bucket is spent on bad keys
