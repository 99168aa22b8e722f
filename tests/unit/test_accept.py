"""fraudserve/accept.py: connections accepted on blocking threads reach their loop's protocol, in turn."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator

import pytest

from fraudserve.accept import AcceptThreadServer


class Echo(asyncio.Protocol):
    """Answers each chunk with the name of the server that accepted the connection."""

    def __init__(self, name: str) -> None:
        self.name = name.encode()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(self.name)  # type: ignore[attr-defined]


class LoopThread:
    """An event loop on a thread of its own with an AcceptThreadServer on ``sock``, like one API worker."""

    def __init__(self, name: str, sock: socket.socket) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = AcceptThreadServer(self.loop, lambda: Echo(name), sock)
        self.server.start()

    def stop(self) -> None:
        self.server.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=5)
        self.loop.close()


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield sock
    sock.close()


def ask(port: int) -> str:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"?")
        return client.recv(16).decode()


def test_two_workers_on_one_socket_take_connections_in_turn(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    workers = [LoopThread("a", listening), LoopThread("b", listening)]
    try:
        # One connection at a time, each answered before the next: the worker that has waited longest takes it.
        answers = [ask(port) for _ in range(20)]
    finally:
        for worker in workers:
            worker.stop()
    assert set(answers) == {"a", "b"}, answers
    assert min(answers.count("a"), answers.count("b")) >= 5, answers


def test_a_closed_server_serves_no_new_connection(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    worker = LoopThread("a", listening)
    assert ask(port) == "a"
    worker.server.close()
    assert not worker.server.is_serving()
    # The accept thread may still take one connection: it is closed (or reset), not served.
    with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
        client.sendall(b"?")
        try:
            answer = client.recv(16)
        except ConnectionResetError:
            answer = b""
        assert answer == b""
    worker.stop()
