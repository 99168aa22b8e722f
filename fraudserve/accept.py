"""Spreads the REST connections over the API workers: each worker accepts on a thread of its own, blocking.

BentoML's supervisor opens one listening socket and every API worker serves it (there is no SO_REUSEPORT for
HTTP). An event loop accepts when epoll says the socket is readable, and epoll wakes every worker: the first
to get there takes the connection, and one that is awake takes the rest of a burst. wrk's 64 connections,
opened at once, all landed on one worker in 1 run of 4 even with ``UV_TCP_SINGLE_ACCEPT=1`` (pidstat: 97 % and
0.3 % of a core; 1342 against ~2600 req/s). A blocking ``accept()`` waits in the socket's own queue instead,
where Linux wakes one waiter per connection, the one that has waited longest: the workers take connections in
turn. Each accepted connection is handed to the worker's event loop, which serves it as before.

Wake-one alone does not spread a burst: a woken thread that finds more connections queued takes them without
waiting again, so one idle thread could drain all 64 of wrk's connections in microseconds while the other was
still being scheduled (2 runs of 2 here, 1,411 against ~2,700 req/s). So a thread takes its next connection only
once its loop has taken the previous one (or ``handoff_timeout_s`` passed): meanwhile the other workers take
theirs, and a busy worker, whose loop answers later, takes fewer.

``install()`` patches ``uvicorn.Server.startup`` so that the TCP listening sockets it is given (how BentoML
starts every worker) are served this way; other sockets (the runners' Unix sockets) keep uvicorn's own accept.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

log = logging.getLogger(__name__)

ProtocolFactory = Callable[[], asyncio.Protocol]
_TCP = (socket.AF_INET, socket.AF_INET6)
# How long an accept thread waits for its loop to take a connection before it accepts the next one regardless
# (a loop stalled that long should not stop its worker from accepting).
HANDOFF_TIMEOUT_S = 0.1


class AcceptThreadServer:
    """The part of ``asyncio.Server`` uvicorn uses, over an accept thread."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        factory: ProtocolFactory,
        sock: socket.socket,
        *,
        handoff_timeout_s: float = HANDOFF_TIMEOUT_S,
    ) -> None:
        self._loop = loop
        self._factory = factory
        self._sock = sock
        self._handoff_timeout_s = handoff_timeout_s
        self._handed = threading.Event()  # the loop has taken the last connection handed over
        self._closing = threading.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._thread = threading.Thread(target=self._accept_forever, name="fraud-accept", daemon=True)

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return (self._sock,)

    def start(self) -> AcceptThreadServer:
        # The listening socket is shared with the other workers: they all accept this way, blocking.
        self._sock.setblocking(True)
        self._thread.start()
        return self

    def _accept_forever(self) -> None:
        while not self._closing.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError as exc:
                if self._closing.is_set():
                    return
                log.warning("accept failed: %r", exc)
                continue
            self._handed.clear()
            try:
                self._loop.call_soon_threadsafe(self._serve, conn)
            except RuntimeError:  # the loop is closed: the worker is exiting
                conn.close()
                return
            self._handed.wait(self._handoff_timeout_s)

    def _serve(self, conn: socket.socket) -> None:
        self._handed.set()
        if self._closing.is_set():
            conn.close()
            return
        conn.setblocking(False)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        task = self._loop.create_task(self._connect(conn))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, sock=conn)
        except OSError as exc:  # the client went away between accept and now
            log.debug("accepted connection lost: %r", exc)
            conn.close()

    def close(self) -> None:
        # The thread may stay blocked in accept() until the process exits (it is a daemon); a connection it takes
        # meanwhile is closed, and the client retries on another worker.
        self._closing.set()

    async def wait_closed(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def is_serving(self) -> bool:
        return not self._closing.is_set()


_ORIGINAL_STARTUP = uvicorn.Server.startup


async def _startup(self: uvicorn.Server, sockets: list[socket.socket] | None = None) -> None:
    if not sockets or any(s.family not in _TCP for s in sockets) or self.config.ssl is not None:
        await _ORIGINAL_STARTUP(self, sockets)
        return
    loop = asyncio.get_running_loop()
    real = loop.create_server

    async def create_server(factory: ProtocolFactory, *args: Any, **kwargs: Any) -> Any:
        sock = kwargs.get("sock")
        if args or sock is None or not any(sock is s for s in sockets):  # e.g. a server the lifespan starts
            return await real(factory, *args, **kwargs)
        return AcceptThreadServer(loop, factory, sock).start()

    loop.create_server = create_server  # type: ignore[method-assign,assignment]
    try:
        await _ORIGINAL_STARTUP(self, sockets)
    finally:
        del loop.create_server  # type: ignore[method-assign]


def install() -> None:
    """Idempotent: uvicorn servers started from now on in this process accept on a thread."""
    uvicorn.Server.startup = _startup  # type: ignore[method-assign]
