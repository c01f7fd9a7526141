"""FaultProxy through real sockets: each fault against a real server and a real client.

No test asserts an upper bound on time. Where a delay is the behaviour under test, the
assertion is a lower bound (the proxy must not deliver early), which load cannot break.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
import socket
import struct
import threading
import time
import typing
from collections.abc import Iterator

import pytest

from pytest_netthreads import ServerConnection, ThreadedServer, faults, handlers
from pytest_netthreads._runtime.reactor import get_reactor, shutdown_reactor_if_idle
from pytest_netthreads.faults import (
    Bandwidth,
    Corrupt,
    DelayConnect,
    FaultProxy,
    HoldConnect,
    Latency,
    LimitData,
    ProxyError,
    ProxyFault,
    ResetPeer,
    Slice,
    SlowClose,
    Stall,
    Timeout,
    _behaviour,
    _connection,
    insocket,
    specs,
)
from tests._util import held_close, recv_exactly

pytestmark = pytest.mark.usefixtures("_reactor_running", "no_thread_or_fd_leak")


@pytest.fixture(scope="module")
def _reactor_running() -> None:
    # The shared reactor's own descriptors open on first use; not a leak of the test's.
    get_reactor().start()


@pytest.fixture
def echo() -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.echo, concurrency="selector") as server:
        yield server


@pytest.fixture
def proxy(echo: ThreadedServer) -> Iterator[FaultProxy]:
    with FaultProxy(echo, seed=7) as proxy:
        yield proxy


def _client(proxy: FaultProxy, timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=timeout)


def _read_until_eof(sock: socket.socket) -> bytes:
    data = bytearray()
    while chunk := sock.recv(65536):
        data += chunk
    return bytes(data)


def test_forwards_both_ways_and_records_the_connection(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 1000
    with _client(proxy) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        assert recv_exactly(sock, len(payload)) == payload
        sender.join(10)
    (record,) = proxy.wait_for_connections(1, closed=True)
    assert record.bytes_upstream == record.bytes_downstream == len(payload)
    assert record.how_closed == "eof"
    assert proxy.log == []


def test_waiting_for_closed_connections_returns_once_the_proxy_sockets_are_closed(
    proxy: FaultProxy,
) -> None:
    # The record says "closed" just before the proxy closes its sockets (a client that saw
    # the close finds the record closed); a wait for the closed connection must return only
    # after the sockets are closed too. The proxy's close of its client-side socket is held
    # here until a timer lets it go.
    with held_close(proxy.port) as held:
        with _client(proxy) as sock:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
        assert held.closing.wait(10)
        threading.Timer(0.2, held.proceed.set).start()
        (record,) = proxy.wait_for_connections(1, closed=True)
        assert held.closed.is_set(), "returned while the proxy's socket was still open"
        assert record.how_closed == "eof"


def test_half_close_reaches_the_server_as_eof() -> None:
    def count_then_answer(conn: ServerConnection) -> None:
        total = 0
        while chunk := conn.recv(65536):
            total += len(chunk)
        conn.sendall(f"got {total}".encode())

    with ThreadedServer(count_then_answer) as server, FaultProxy(server) as proxy:
        with _client(proxy) as sock:
            sock.sendall(b"x" * 5000)
            sock.shutdown(socket.SHUT_WR)
            assert _read_until_eof(sock) == b"got 5000"
        (record,) = server.wait_for_connections(1, closed=True)
        assert record.saw_eof


def test_latency_delays_each_reply_in_order(proxy: FaultProxy) -> None:
    proxy.add(Latency(0.2))
    with _client(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"one")
        assert recv_exactly(sock, 3) == b"one"
        assert time.monotonic() - started >= 0.2  # lower bound only
        sock.sendall(b"two")
        assert recv_exactly(sock, 3) == b"two"
    (event,) = [e for e in proxy.log if e.action == "applied"]
    assert event.direction == "downstream" and event.offset == 0


def test_scoped_faults_are_removed_at_the_end_of_the_block(proxy: FaultProxy) -> None:
    with proxy.add(Latency(0.05), Slice(2)):
        assert list(proxy.faults) == [Latency(0.05), Slice(2)]
    assert len(proxy.faults) == 0
    proxy.add(Slice(3))
    proxy.remove(Slice(3))
    with pytest.raises(ValueError, match="not active"):
        proxy.remove(Slice(3))


def test_slice_delivers_in_separate_pieces(echo: ThreadedServer) -> None:
    chunks: list[bytes] = []

    def record_reads(conn: ServerConnection) -> None:
        while chunk := conn.recv(65536):
            chunks.append(chunk)

    with ThreadedServer(record_reads) as server, FaultProxy(
        server, Slice(2, delay=0.05, direction="upstream")
    ) as proxy:
        with _client(proxy) as sock:
            sock.sendall(b"abcdefgh")
        server.wait_for_connections(1, closed=True)
    assert b"".join(chunks) == b"abcdefgh"
    assert all(len(c) % 2 == 0 for c in chunks)  # cut only at the 2-byte boundaries
    assert len(chunks) >= 2


def test_slice_variation_is_reproducible_from_the_seed(echo: ThreadedServer) -> None:
    def cuts(seed: int) -> list[int]:
        seen: list[int] = []

        def record_reads(conn: ServerConnection) -> None:
            while chunk := conn.recv(65536):
                seen.append(len(chunk))

        fault = Slice(4, variation=3, delay=0.02, direction="upstream")
        with ThreadedServer(record_reads) as server, FaultProxy(server, fault, seed=seed) as p:
            with _client(p) as sock:
                sock.sendall(b"z" * 40)
            server.wait_for_connections(1, closed=True)
        return seen

    # The planned piece sizes come from the seeded generator; reads may merge pieces but
    # never split one, so the cumulative offsets of the reads are a subset of the plan.
    import random

    rng = random.Random("3:0:upstream")
    plan, pos = set(), 0
    while pos < 40:
        pos += 4 + rng.randint(-3, 3)
        plan.add(min(pos, 40))
    offsets, pos = set(), 0
    for n in cuts(3):
        pos += n
        offsets.add(pos)
    assert offsets <= plan


def test_timeout_forwards_then_holds_silently(proxy: FaultProxy) -> None:
    proxy.add(Timeout(after_bytes=3))
    with _client(proxy) as sock:
        sock.sendall(b"abcdef")
        assert recv_exactly(sock, 3) == b"abc"
        sock.settimeout(0.5)
        with pytest.raises(TimeoutError):
            sock.recv(10)
        proxy.clear()
        sock.settimeout(10)
        sock.sendall(b"again")
        assert recv_exactly(sock, 5) == b"again"  # the held connection was still open
    assert [e.action for e in proxy.log] == ["drop from here"]
    assert proxy.log[0].offset == 3


def test_stall_makes_the_sender_block() -> None:
    with ThreadedServer(handlers.sink, concurrency="selector") as server, FaultProxy(
        server, Stall(after_bytes=10)
    ) as proxy:
        with _client(proxy, timeout=0.5) as sock:
            sent = 0
            with pytest.raises(TimeoutError):
                for _ in range(1000):  # bounded: the buffers fill long before 1000 MiB
                    sock.sendall(b"s" * (1 << 20))
                    sent += 1 << 20
            (event,) = [e for e in proxy.log if e.action == "stall"]
            assert event.offset == 10
            record = server.wait_for_connections(1)[0]
            assert record.bytes_in <= 10
            proxy.clear()  # reading resumes: the sink receives what was buffered
        server.wait_for_connections(1, closed=True)
    assert server.connections[0].bytes_in > 10


def test_reset_peer_resets_a_connection_opened_before_it(proxy: FaultProxy) -> None:
    with _client(proxy) as sock:
        sock.sendall(b"hi")
        assert recv_exactly(sock, 2) == b"hi"
        proxy.add(ResetPeer())
        with pytest.raises(ConnectionResetError):
            sock.recv(10)
    (record,) = proxy.wait_for_connections(1, closed=True)
    assert record.how_closed == "fault-reset"


def test_reset_peer_after_bytes(proxy: FaultProxy, echo: ThreadedServer) -> None:
    proxy.add(ResetPeer(after_bytes=4))
    with _client(proxy) as sock:
        sock.sendall(b"abcdefgh")
        received = bytearray()
        with pytest.raises(ConnectionResetError):
            while chunk := sock.recv(10):
                received += chunk
    assert bytes(received) in (b"", b"abcd")  # what arrived before the RST, never more
    assert [(e.action, e.offset) for e in proxy.log] == [("reset", 4)]
    (record,) = echo.wait_for_connections(1, closed=True)
    assert record.how_closed == "peer-reset"  # the server was reset too


def test_limit_data_forwards_n_bytes_then_fin(proxy: FaultProxy) -> None:
    proxy.add(LimitData(5))
    with _client(proxy) as sock:
        sock.sendall(b"hello world")
        assert _read_until_eof(sock) == b"hello"


def test_slow_close_delays_the_fin() -> None:
    with ThreadedServer(handlers.Banner(b"bye")) as server, FaultProxy(
        server, SlowClose(0.3)
    ) as proxy:
        with _client(proxy) as sock:
            assert recv_exactly(sock, 3) == b"bye"
            started = time.monotonic()
            assert sock.recv(10) == b""
            assert time.monotonic() - started >= 0.25  # lower bound only
    assert any(e.action.startswith("slow close") for e in proxy.log)


def test_corrupt_flips_the_bytes_at_given_offsets(proxy: FaultProxy) -> None:
    proxy.add(Corrupt(offsets=(1, 3), mask=0x20))
    with _client(proxy) as sock:
        sock.sendall(b"abcdef")
        assert recv_exactly(sock, 6) == b"aBcDef"
    assert [(e.action, e.offset) for e in proxy.log] == [("corrupt", 1), ("corrupt", 3)]


def test_random_corruption_is_reproducible_from_the_seed(echo: ThreadedServer) -> None:
    def run(seed: int) -> bytes:
        with FaultProxy(echo, Corrupt(rate=0.05), seed=seed) as p, _client(p) as sock:
            sock.sendall(b"\0" * 2000)
            return recv_exactly(sock, 2000)

    first, again, other = run(11), run(11), run(12)
    assert first == again
    assert first != b"\0" * 2000
    assert first != other


def test_probability_draws_are_per_connection_and_reproducible(echo: ThreadedServer) -> None:
    def decisions(seed: int) -> list[str]:
        with FaultProxy(echo, LimitData(0, probability=0.5), seed=seed) as p:
            for _ in range(12):
                with _client(p) as sock:
                    sock.sendall(b"x")
                    sock.recv(1)
            return [e.action for e in p.log if e.action in ("chosen", "skipped")]

    first = decisions(5)
    assert first == decisions(5)
    assert set(first) == {"chosen", "skipped"}


def test_bandwidth_paces_the_transfer(proxy: FaultProxy) -> None:
    proxy.add(Bandwidth(100_000))
    with _client(proxy) as sock:
        started = time.monotonic()
        sender = threading.Thread(target=sock.sendall, args=(b"b" * 30_000,))
        sender.start()
        assert recv_exactly(sock, 30_000) == b"b" * 30_000
        sender.join(10)
        assert time.monotonic() - started >= 0.25  # lower bound only: 30 kB at 100 kB/s


def test_hold_connect_accepts_but_does_not_dial(proxy: FaultProxy, echo: ThreadedServer) -> None:
    proxy.add(HoldConnect())
    with _client(proxy, timeout=0.3) as sock:
        sock.sendall(b"wait")
        with pytest.raises(TimeoutError):
            sock.recv(10)
        assert echo.connections == []
        proxy.clear()
        sock.settimeout(10)
        assert recv_exactly(sock, 4) == b"wait"
    assert [e.action for e in proxy.log] == ["hold"]


def test_delay_connect(proxy: FaultProxy, echo: ThreadedServer) -> None:
    proxy.add(DelayConnect(0.2))
    with _client(proxy) as sock:
        started = time.monotonic()
        sock.sendall(b"late")
        assert recv_exactly(sock, 4) == b"late"
        assert time.monotonic() - started >= 0.15  # lower bound only
    assert proxy.log[0].action == "delay connect 0.2s"


def test_down_refuses_and_up_listens_again_on_the_same_port(proxy: FaultProxy) -> None:
    address = proxy.address
    with proxy.refusing():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(address, timeout=5)
    assert proxy.address == address
    with _client(proxy) as sock:
        sock.sendall(b"up")
        assert recv_exactly(sock, 2) == b"up"


def test_down_can_reset_live_connections(proxy: FaultProxy) -> None:
    with _client(proxy) as sock:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"
        proxy.down(reset_connections=True)
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    proxy.up()


def test_target_down_resets_the_client_and_is_logged() -> None:
    with ThreadedServer(handlers.echo) as server:
        address = server.address
    with FaultProxy(address) as proxy:
        with pytest.raises(ConnectionResetError), _client(proxy) as sock:
            sock.recv(1)  # (the reset can even beat connect() to it)
        (record,) = proxy.wait_for_connections(1, closed=True)
        assert record.how_closed == "connect-failed"
        assert "ECONNREFUSED" in proxy.log[0].action


def test_unix_socket_target() -> None:
    with ThreadedServer(handlers.echo, unix=True) as server, FaultProxy(
        server, Slice(1, direction="both")
    ) as proxy, _client(proxy) as sock:
        sock.sendall(b"unix")
        assert recv_exactly(sock, 4) == b"unix"


def test_stop_closes_idle_connections(echo: ThreadedServer) -> None:
    proxy = FaultProxy(echo).start()
    sock = _client(proxy)
    try:
        sock.sendall(b"x")
        assert recv_exactly(sock, 1) == b"x"  # nothing unread anywhere: the close is a FIN
        proxy.stop()
        assert sock.recv(1) == b""
        assert proxy.connections[0].how_closed == "proxy-stop"
    finally:
        sock.close()
    proxy.stop()  # again: nothing


def test_an_error_in_a_proxy_callback_is_raised_by_stop(
    echo: ThreadedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> None:
        raise RuntimeError("bug in a fault")

    proxy = FaultProxy(echo).start()
    # The no-fault path and the general one: the bug is hit whichever the data takes.
    monkeypatch.setattr(_connection.Side, "forward", broken)
    monkeypatch.setattr(_connection.Pipe, "read", broken)
    with _client(proxy) as sock:
        sock.sendall(b"x")
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    with pytest.raises(ProxyError, match="bug in a fault") as info:
        proxy.stop()
    assert "connection #0" in str(info.value) and "seed=" in str(info.value)


def test_cannot_start_twice_and_needs_start_for_an_address(echo: ThreadedServer) -> None:
    proxy = FaultProxy(echo)
    with pytest.raises(RuntimeError, match="no address until start"):
        _ = proxy.address
    with proxy:
        with pytest.raises(RuntimeError, match="already started"):
            proxy.start()


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((42,), {}, TypeError, "target must be"),
        ((("127.0.0.1", 1), "latency"), {}, TypeError, "faults must be proxy faults"),
        ((("127.0.0.1", 1),), {"seed": "x"}, TypeError, "seed must be an int"),
        ((("127.0.0.1", 1),), {"port": 70000}, ValueError, "port must be"),
        ((("127.0.0.1", 1),), {"port": -1}, ValueError, "port must be from 0 to 65535, got -1"),
        # Used to connect to port 4464 (70000 mod 65536) without a word.
        ((("127.0.0.1", 70000),), {}, ValueError, "target port must be from 1 to 65535, got 70000"),
        ((("127.0.0.1", -1),), {}, ValueError, "target port must be from 1 to 65535, got -1"),
        ((("127.0.0.1", 0),), {}, ValueError, "target port must be from 1 to 65535, got 0"),
        (("",), {}, ValueError, "target .* must not be empty"),
        (("/tmp/" + "s" * 200,), {}, ValueError, "at most 107 bytes"),
        ((("127.0.0.1", 1),), {"stop_timeout": float("inf")}, ValueError,
         "stop_timeout must be a finite number of seconds"),
        ((("127.0.0.1", 1),), {"stop_timeout": float("nan")}, ValueError, "stop_timeout"),
        ((("127.0.0.1", 1),), {"log_limit": -1}, ValueError, "log_limit must be an int >= 0"),
        ((("127.0.0.1", 1),), {"log_limit": 1.5}, TypeError, "log_limit must be an int"),
        ((("127.0.0.1", 1),), {"name": 3}, TypeError, "name must be a non-empty str"),
    ],
)
def test_bad_arguments(
    args: tuple[object, ...], kwargs: dict[str, object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        FaultProxy(*args, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("too_long", [float("inf"), 1e300, 10**400])
def test_an_infinite_stop_timeout_is_refused_and_the_proxy_keeps_running(
    too_long: float,
) -> None:
    # 1e300 is finite but beyond what a lock or a poll can wait: it used to raise
    # OverflowError from inside stop(), with the proxy still forwarding.
    with pytest.raises(ValueError, match="stop_timeout must be a finite number of seconds"):
        FaultProxy(("127.0.0.1", 1), stop_timeout=too_long)
    with ThreadedServer(handlers.echo) as target:
        proxy = FaultProxy(target).start()
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds"):
            proxy.wait_for_connections(1, timeout=too_long)
        with pytest.raises(ValueError, match="timeout must be a finite number of seconds"):
            proxy.stop(too_long)
        with socket.create_connection(proxy.address, timeout=10) as client:
            client.sendall(b"on")
            assert recv_exactly(client, 2) == b"on"
        proxy.stop()
        with pytest.raises(ConnectionRefusedError):  # stopped for real: nobody listens there
            socket.create_connection(proxy.address, timeout=10).close()


# -- the shared event loop ------------------------------------------------------------------


def test_bulk_without_faults_keeps_every_byte_in_order(proxy: FaultProxy) -> None:
    # A reader slower than the writer makes the proxy's sends fall short, so data takes the
    # queued path as well as the straight one, back and forth.
    payload = random.Random(3).randbytes(8 << 20)
    with _client(proxy, timeout=30) as sock:
        sender = threading.Thread(target=sock.sendall, args=(payload,))
        sender.start()
        got = bytearray()
        while len(got) < len(payload):
            chunk = sock.recv(4096)
            if not chunk:
                break
            got += chunk
        sender.join(30)
    assert not sender.is_alive()
    assert hashlib.sha256(got).hexdigest() == hashlib.sha256(payload).hexdigest()
    (record,) = proxy.wait_for_connections(1, closed=True)
    assert record.bytes_upstream == record.bytes_downstream == len(payload)


def test_a_fault_added_mid_stream_acts_on_the_next_bytes(proxy: FaultProxy) -> None:
    with _client(proxy) as sock:
        sock.sendall(b"plain")
        assert recv_exactly(sock, 5) == b"plain"  # forwarded on the no-fault path
        with proxy.add(Corrupt(offsets=(5,), direction="upstream")):
            sock.sendall(b"abc")
            assert recv_exactly(sock, 3) == bytes([ord("a") ^ 0xFF]) + b"bc"
        sock.sendall(b"xyz")
        assert recv_exactly(sock, 3) == b"xyz"


def test_the_proxy_runs_on_the_servers_loop_and_starts_no_thread(echo: ThreadedServer) -> None:
    before = set(threading.enumerate())
    with FaultProxy(echo, Latency(0.01)) as proxy, _client(proxy) as sock:
        sock.sendall(b"ping")
        assert recv_exactly(sock, 4) == b"ping"
        assert set(threading.enumerate()) == before
        # Its callbacks run in the loop thread, under the loop's lock.
        assert get_reactor().thread in before


def test_a_proxy_that_is_down_keeps_the_shared_loop() -> None:
    # A target the loop does not know (a plain listening socket): when the proxy is down,
    # nothing of this test is registered with the loop.
    with socket.create_server(("127.0.0.1", 0)) as target:
        target.settimeout(10)
        proxy = FaultProxy(target.getsockname()).start()
        try:
            proxy.down()
            # pytest's in-process runs (pytester) stop the loop when nothing uses it.
            assert shutdown_reactor_if_idle() is False
            proxy.up()
            with _client(proxy) as sock:
                server_side, _ = target.accept()
                with server_side:
                    server_side.sendall(b"hi")
                    assert recv_exactly(sock, 2) == b"hi"
        finally:
            proxy.stop()


def test_loop_timers_run_in_order_in_the_loop_thread() -> None:
    reactor = get_reactor()
    ran: list[tuple[str, threading.Thread]] = []
    done = threading.Event()
    errors: list[BaseException] = []

    def note(name: str) -> None:
        ran.append((name, threading.current_thread()))
        if len(ran) == 3:
            done.set()

    now = time.monotonic()
    with reactor.lock:  # added from this thread: the loop must wake to see them
        reactor.call_at_locked(now + 0.03, lambda: note("third"), errors.append)
        reactor.call_at_locked(now + 0.01, lambda: note("first"), errors.append)
        reactor.call_at_locked(now + 0.02, lambda: note("second"), errors.append)
    assert done.wait(10)
    assert [name for name, _ in ran] == ["first", "second", "third"]
    assert {thread for _, thread in ran} == {reactor.thread}
    assert errors == []


def test_a_cancelled_loop_timer_does_not_run_and_errors_go_to_their_owner() -> None:
    reactor = get_reactor()
    ran: list[str] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def fail() -> None:
        raise RuntimeError("timer bug")

    def on_error(exc: BaseException) -> None:
        errors.append(exc)
        done.set()

    now = time.monotonic()
    with reactor.lock:
        cancelled = reactor.call_at_locked(now, lambda: ran.append("cancelled"), on_error)
        cancelled.cancel()
        reactor.call_at_locked(now + 0.01, fail, on_error)
    assert done.wait(10)
    assert ran == []
    assert [str(exc) for exc in errors] == ["timer bug"]


# -- fault kinds and their behaviours; records and handles ------------------------------------


def _kinds() -> list[type[ProxyFault]]:
    found = [getattr(specs, name) for name in specs.__all__]
    bases = (ProxyFault, specs.ConnectFault)
    return [k for k in found if isinstance(k, type) and issubclass(k, ProxyFault)
            and k not in bases]


@pytest.mark.parametrize("kind", _kinds(), ids=lambda k: k.__name__)
def test_every_proxy_fault_kind_has_its_own_behaviour(kind: type[ProxyFault]) -> None:
    behaviour = _behaviour.BEHAVIOURS[kind]
    assert behaviour is not _behaviour.Behaviour
    # A connection fault is asked before the target is dialed, and only then.
    assert behaviour.connect == issubclass(kind, specs.ConnectFault)


def test_a_fault_kind_without_a_behaviour_is_refused_where_it_is_given(
    echo: ThreadedServer,
) -> None:
    @dataclasses.dataclass(frozen=True)
    class Mystery(ProxyFault):
        pass

    with pytest.raises(TypeError, match="Mystery has no proxy behaviour"):
        FaultProxy(echo, Mystery())
    with FaultProxy(echo) as proxy:
        with pytest.raises(TypeError, match="Mystery has no proxy behaviour"):
            proxy.add(Latency(0.01), Mystery())
        assert proxy.faults == ()  # nothing of the call was added

    @dataclasses.dataclass(frozen=True)
    class SlowerLatency(Latency):  # a subclass of a kind behaves as that kind
        pass

    with FaultProxy(echo, SlowerLatency(0.01)) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"x")
            assert recv_exactly(sock, 1) == b"x"
        assert [e.action for e in proxy.log] == ["applied"]


# What version 5e535af (before the faults had behaviours) made of this run with seed 1234:
# the fault log of each connection and direction, and the bytes the client got back (a hash).
# The same seed must replay it: same draws from each pipe's generator, in the same order.
_REPLAY_LOG = {
    "0:downstream": "0:skipped 0:skipped 0:chosen 0:corrupt 0:applied 0:applied 21:corrupt "
    "51:corrupt",
    "0:upstream": "0:skipped 0:chosen 14:corrupt 0:applied 27:corrupt 38:corrupt",
    "1:downstream": "0:chosen 0:chosen 0:chosen 0:applied 0:applied 0:applied 49:corrupt",
    "1:upstream": "0:skipped 0:skipped 0:applied 25:corrupt 50:corrupt",
    "2:downstream": "0:skipped 0:skipped 0:chosen 0:applied 0:applied 32:corrupt 34:corrupt "
    "43:corrupt",
    "2:upstream": "0:chosen 0:skipped 0:applied 23:corrupt 30:corrupt 57:corrupt",
    "3:downstream": "0:chosen 0:chosen 0:chosen 0:applied 0:applied 0:applied 18:corrupt "
    "20:corrupt 33:corrupt 46:corrupt",
    "3:upstream": "0:chosen 0:skipped 0:applied 35:corrupt 37:corrupt",
}
_REPLAY_DATA = "55321725a7ccbe7f5c968ffd94475b4444a831686aca319c19de73ea581a9cca"


def test_a_seed_replays_the_draws_of_the_version_before_behaviours(echo: ThreadedServer) -> None:
    # Probability draws, per-byte corruption, jitter and slice variation, all from each
    # pipe's seeded generator. Each message waits for its echo, so every read is one message
    # and the draws depend on the seed alone.
    plan = (
        LimitData(10**6, probability=0.5, direction="both"),
        Corrupt(rate=0.05, direction="both"),
        Latency(0.001, jitter=0.001, direction="both"),
        Slice(3, variation=2),
        Bandwidth(10**7, probability=0.5),
        Stall(10**6, probability=0.5, direction="both"),
    )
    got = b""
    with FaultProxy(echo, *plan, seed=1234) as proxy:
        for _ in range(4):
            with socket.create_connection(proxy.address, timeout=10) as sock:
                for i in range(4):
                    sock.sendall(bytes([i]) * 16)
                    got += recv_exactly(sock, 16)
        proxy.wait_for_connections(4, closed=True)
        log = proxy.log
    pipes: dict[str, list[str]] = {}
    for e in log:
        if e.action in ("delay", "cut"):  # each chunk's draws, logged since (not in 5e535af)
            continue
        pipes.setdefault(f"{e.connection}:{e.direction}", []).append(f"{e.offset}:{e.action}")
    assert {key: " ".join(actions) for key, actions in pipes.items()} == _REPLAY_LOG
    assert hashlib.sha256(got).hexdigest() == _REPLAY_DATA


def test_how_a_connection_ended_uses_the_documented_words(echo: ThreadedServer) -> None:
    with FaultProxy(echo) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:  # eof
            sock.sendall(b"a")
            recv_exactly(sock, 1)
        proxy.wait_for_connections(1, closed=True)
        with socket.create_connection(proxy.address, timeout=10) as sock:  # reset
            sock.sendall(b"b")
            recv_exactly(sock, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        proxy.wait_for_connections(2, closed=True)
        with proxy.add(ResetPeer()), pytest.raises(ConnectionResetError):  # fault-reset
            with socket.create_connection(proxy.address, timeout=10) as s:
                s.recv(1)  # (the reset can even beat connect() to it)
        proxy.wait_for_connections(3, closed=True)
        sock = socket.create_connection(proxy.address, timeout=10)
        try:
            sock.sendall(b"d")
            recv_exactly(sock, 1)
            proxy.stop()  # proxy-stop
        finally:
            sock.close()
    seen = [record.how_closed for record in proxy.connections]
    assert seen == ["eof", "reset", "fault-reset", "proxy-stop"]
    assert set(seen) <= set(typing.get_args(faults.ProxyHowClosed))


def test_add_returns_a_public_handle(echo: ThreadedServer) -> None:
    with FaultProxy(echo) as proxy:
        handle = proxy.add(Latency(0.01))
        assert isinstance(handle, faults.ProxyFaultHandle)
        handle.remove()
        handle.remove()  # idempotent
        assert proxy.faults == ()
    with faults.SocketFaults() as socket_faults:
        rule = socket_faults.add(faults.RecvChunks([1]), address=echo.address)
        assert isinstance(rule, faults.SocketFaultRule)
        assert rule.faults == (faults.RecvChunks([1]),)
        with socket.create_connection(echo.address, timeout=10) as sock:
            sock.sendall(b"ab")
            assert sock.recv(100) == b"a"  # cut after one byte
            rule.remove()
            assert recv_exactly(sock, 1) == b"b"
            sock.sendall(b"cd")
            assert recv_exactly(sock, 2) == b"cd"


def test_the_public_names_exist_and_dead_ones_are_gone() -> None:
    for module in (faults, specs, insocket):
        for name in module.__all__:
            assert getattr(module, name) is not None, (module.__name__, name)
    assert {"ProxyFaultHandle", "SocketFaultRule", "ProxyHowClosed", "ConnectFault"} <= set(
        faults.__all__
    )
    assert set(specs.__all__) <= set(faults.__all__)
    # It exempted the calling thread; nothing called it since the proxy dials through the
    # C connect_ex (faults/_connection.py), which SocketFaults never sees.
    assert not hasattr(insocket, "exempt_current_thread")
