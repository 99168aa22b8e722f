"""fraudserve/accept.py: connections accepted on blocking threads reach their loop's protocol, in turn."""

from __future__ import annotations

import asyncio
import gc
import itertools
import select
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from fraudserve.accept import AcceptThreadServer


class Echo(asyncio.Protocol):
    """Answers each chunk with the name of the server that accepted the connection."""

    def __init__(self, name: str, live: set[asyncio.BaseTransport]) -> None:
        self.name = name.encode()
        self.live = live

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.live.add(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.live.discard(self.transport)

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.name)  # type: ignore[attr-defined]


class LoopThread:
    """An event loop on a thread of its own with an AcceptThreadServer on ``sock``, like one API worker."""

    def __init__(self, name: str, sock: socket.socket, **options: float) -> None:
        self.live: set[asyncio.BaseTransport] = set()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = AcceptThreadServer(self.loop, lambda: Echo(name, self.live), sock, **options)
        self.server.start()

    async def _close_connections(self) -> None:
        for transport in list(self.live):
            transport.close()
        # close() finishes on a later loop turn (connection_lost); a loop stopped before that leaves the socket
        # open, and its transport warns when garbage-collected, in whichever test runs then.
        for _ in range(100):
            if not self.live:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(f"connections still open: {self.live}")

    def stop(self) -> None:
        self.server.close()
        asyncio.run_coroutine_threadsafe(self._close_connections(), self.loop).result(timeout=5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()
        gc.collect()  # a transport leaked here warns in this test, not in a later one


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.shutdown(socket.SHUT_RDWR)  # wakes the accept threads still blocked on it (Linux), so they end
    sock.close()


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"?")
        return client.recv(16).decode()


def waiting_in_accept(thread: threading.Thread) -> bool:
    """Whether ``thread`` is blocked in accept() (Linux: the kernel function it sleeps in)."""
    try:
        with open(f"/proc/self/task/{thread.native_id}/wchan") as f:
            return "accept" in f.read()
    except OSError:
        pytest.skip("no /proc/self/task/*/wchan on this system")


def until_all_wait_in_accept(workers: list[LoopThread]) -> None:
    # A worker that has not gone back to accept() yet (a busy machine) cannot take a connection.
    for _ in range(500):
        if all(waiting_in_accept(w.server._thread) for w in workers):
            return
        time.sleep(0.01)
    raise AssertionError("the accept threads never all waited in accept()")


def ask_when_all_wait(port: int, workers: list[LoopThread]) -> str:
    # Once all wait, Linux wakes the one that has waited longest.
    until_all_wait_in_accept(workers)
    return ask(port)


def test_two_workers_on_one_socket_take_connections_in_turn(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    workers = [LoopThread("a", listening), LoopThread("b", listening)]
    try:
        answers = [ask_when_all_wait(port, workers) for _ in range(20)]
    finally:
        for worker in workers:
            worker.stop()
    assert set(answers) == {"a", "b"}, answers
    # Strictly in turn: each connection goes to the worker that did not take the one before.
    assert all(prev != this for prev, this in itertools.pairwise(answers)), answers


def test_a_worker_whose_loop_is_busy_leaves_a_burst_to_the_others(listening: socket.socket) -> None:
    """An accept thread takes its next connection only once its loop took the last one: a burst is shared."""
    port = listening.getsockname()[1]
    # A handoff timeout far past the test: only its loop taking a connection lets the busy worker accept again.
    busy, free = LoopThread("a", listening, handoff_timeout_s=60), LoopThread("b", listening, handoff_timeout_s=60)
    release = threading.Event()
    busy.loop.call_soon_threadsafe(release.wait, 30)  # the busy worker's loop is held, as by a long request
    clients = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(10)]
    try:
        for client in clients:
            client.sendall(b"?")
        answered: dict[socket.socket, str] = {}
        deadline = time.monotonic() + 10
        while len(answered) < 9 and time.monotonic() < deadline:
            readable, _, _ = select.select([c for c in clients if c not in answered], [], [], 0.1)
            for client in readable:
                answered[client] = client.recv(16).decode()
        # The busy worker's thread holds at most one connection (handed to its loop); the free worker takes the rest.
        assert len(answered) >= 9 and set(answered.values()) == {"b"}, answered
        release.set()
        for client in clients:  # and the held one is served once the busy loop goes on
            if client not in answered:
                assert client.recv(16) == b"a"
    finally:
        release.set()
        for client in clients:
            client.close()
        busy.stop()
        free.stop()


def test_a_closed_server_serves_no_new_connection(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    worker = LoopThread("a", listening)
    assert ask(port) == "a"
    until_all_wait_in_accept([worker])  # back in accept(): closing cannot stop the call it is in
    worker.server.close()
    assert not worker.server.is_serving()
    # The accept thread takes the next connection still: it is closed (or reset), not served.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"?")
        try:
            answer = client.recv(16)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
    worker.stop()
