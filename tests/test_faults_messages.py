"""Message-aware faults: framings, ``on=faults.Message(...)`` triggers, ``proxy.hold()`` and
faults inside the TLS handshake, through a real proxy with real clients (sockets,
http.client, ssl)."""

from __future__ import annotations

import http.client
import re
import socket
import ssl
import threading
from collections.abc import Iterator

import pytest
import requests

from pytest_netthreads import ThreadedServer, faults, handlers
from pytest_netthreads.faults import FaultProxy, ProxyError
from pytest_netthreads.servers import ServerConnection
from pytest_netthreads.tls import CertificateAuthority
from tests._util import recv_exactly

LINES = faults.Lines()

# -- framings -------------------------------------------------------------------------------


def feed_bytewise(framing: faults.Framing, data: bytes) -> list[bytes]:
    out = []
    for i in range(len(data)):
        out += framing.feed(data[i : i + 1])
    return out


@pytest.mark.parametrize(
    ("framing", "messages"),
    [
        (faults.Lines(), [b"a\n", b"bc\n", b"\n"]),
        (faults.Lines(b"\r\n"), [b"EHLO x\r\n", b"QUIT\r\n"]),
        (faults.LengthPrefixed("!I"), [b"\0\0\0\3abc", b"\0\0\0\0"]),
        (faults.LengthPrefixed("!HB", includes_header=True), [b"\0\5\7xy", b"\0\3\1"]),
        (
            faults.HTTP(),
            [
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhi",
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-T: 1\r\n\r\n",
                b"HTTP/1.1 204 No Content\r\n\r\n",
            ],
        ),
        (
            faults.RESP(),
            [
                b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nva\r\nl\r\n",
                b"+OK\r\n",
                b"$-1\r\n",
                b"*2\r\n*1\r\n:1\r\n%1\r\n+a\r\n$0\r\n\r\n",
                b"PING\r\n",
                b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
            ],
        ),
        (faults.TLSRecords(), [b"\x16\x03\x01\x00\x02\x01\x00", b"\x17\x03\x03\x00\x00"]),
    ],
)
def test_framings_cut_any_split_into_the_same_messages(
    framing: faults.Framing, messages: list[bytes]
) -> None:
    stream = b"".join(messages)
    assert framing.fresh().feed(stream) == messages
    assert feed_bytewise(framing.fresh(), stream) == messages
    partial = framing.fresh()
    assert partial.feed(stream[:-1]) == messages[:-1]
    assert partial.pending == messages[-1][:-1]


def test_a_framing_of_ones_own() -> None:
    class Netstrings(faults.Framing):
        """``3:abc,``"""

        def measure(self, buffer: bytes | bytearray, start: int) -> int | None:
            colon = buffer.find(b":", start)
            if colon < 0:
                return None
            return colon + 1 + int(buffer[start:colon]) + 1

    framing = Netstrings(max_size=100)
    assert feed_bytewise(framing, b"3:abc,0:,") == [b"3:abc,", b"0:,"]
    assert Netstrings(max_size=100) == framing
    assert Netstrings() != framing
    with pytest.raises(faults.FramingError, match="over max_size=100"):
        framing.fresh().feed(b"200:" + b"x" * 201)


def test_buffering_is_bounded() -> None:
    lines = faults.Lines(max_size=10)
    assert lines.feed(b"0123456789") == []
    with pytest.raises(faults.FramingError, match=r"Lines\(b'\\n', max_size=10\): a message "
                       r"over max_size=10 bytes \(11 bytes and not complete\)"):
        lines.feed(b"x")
    with pytest.raises(faults.FramingError, match="a message of 12 bytes, over max_size=10"):
        faults.Lines(max_size=10).feed(b"01234567890\nab")


@pytest.mark.parametrize(
    ("framing", "data", "error"),
    [
        (faults.TLSRecords(), b"GET / HTTP/1.1\r\n", "not a TLS record header"),
        (faults.HTTP(), b"HTTP/1.1 200 OK\r\n\r\n", "its body ends at close"),
        (faults.HTTP(), b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n", "Content-Length"),
        (faults.HTTP(), b"GET / HTTP/1.1\r\nno colon\r\n\r\n", "without ':'"),
        (faults.RESP(), b"*x\r\n", "a length"),
        (faults.LengthPrefixed("!b"), b"\xff", "a header with length -1"),
    ],
)
def test_bytes_that_are_not_the_protocol(
    framing: faults.Framing, data: bytes, error: str
) -> None:
    with pytest.raises(faults.FramingError, match=re.escape(error)):
        framing.feed(data)


@pytest.mark.parametrize(
    ("make", "error", "text"),
    [
        (lambda: faults.Lines(""), TypeError, "terminator must be bytes"),  # type: ignore[arg-type]
        (lambda: faults.Lines(b""), ValueError, "terminator must not be empty"),
        (lambda: faults.Lines(max_size=0), ValueError, "max_size must be an int >= 1"),
        (lambda: faults.Lines(max_size=1.5), TypeError, "max_size"),  # type: ignore[arg-type]
        (lambda: faults.Lines(max_size=True), TypeError, "max_size"),
        (lambda: faults.LengthPrefixed("!d"), ValueError, "first field is an integer"),
        (lambda: faults.LengthPrefixed("nonsense"), ValueError, "header must be a struct"),
        (lambda: faults.LengthPrefixed(4), TypeError, "header must be"),  # type: ignore[arg-type]
        (lambda: faults.LengthPrefixed(includes_header=1), TypeError, "includes_header"),  # type: ignore[arg-type]
        (lambda: faults.TLSRecords.handshake(256), ValueError, "msg_type"),
        (lambda: faults.TLSRecords.record(5), ValueError, "content_type"),
        (lambda: faults.Message(b"\n"), TypeError, "framing must be a Framing"),  # type: ignore[arg-type]
        (lambda: faults.Message(LINES, match="QUIT"), TypeError, "match must be bytes"),  # type: ignore[arg-type]
        (lambda: faults.Message(LINES, match=re.compile("Q")), TypeError, "bytes regex"),
        (lambda: faults.Message(LINES, match=b""), ValueError, "match must not be empty"),
        (lambda: faults.Message(LINES, nth=0), ValueError, "nth must be an int >= 1"),
        (lambda: faults.Message(LINES, nth=2.0), TypeError, "nth"),  # type: ignore[arg-type]
        (lambda: faults.Message(LINES, scope="test"), ValueError, "scope must be one of"),  # type: ignore[arg-type]
        (lambda: faults.Message(LINES, direction="both"), ValueError, "direction must be"),  # type: ignore[arg-type]
        (lambda: faults.Message(LINES, at="middle"), ValueError, "at must be"),  # type: ignore[arg-type]
        (lambda: faults.ResetPeer(on=LINES), TypeError, "on must be a trigger"),  # type: ignore[arg-type]
        (lambda: faults.HoldConnect(on=faults.Message(LINES)), ValueError, "on: HoldConnect"),
    ],
)
def test_bad_values_are_refused_at_the_call(make: object, error: type, text: str) -> None:
    with pytest.raises(error, match=re.escape(text)):
        make()  # type: ignore[operator]


# -- triggers through a real proxy ----------------------------------------------------------


class LineRecorder:
    """A server handler that records each line it receives (in arrival order, over all
    connections) and answers each with ``ok <line>``."""

    def __init__(self, *, answer: bool = True) -> None:
        self.answer = answer
        self.lines: list[bytes] = []
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)

    def __call__(self, conn: ServerConnection) -> None:
        with conn.makefile("rb") as rfile:
            try:
                for line in rfile:
                    with self.changed:
                        self.lines.append(line)
                        self.changed.notify_all()
                    if self.answer:
                        conn.sendall(b"ok " + line)
            except ConnectionResetError:
                pass  # the tests that reset know what the server got

    def wait(self, count: int) -> list[bytes]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.lines) >= count, 10), self.lines
            return list(self.lines)


@pytest.fixture
def recorder() -> Iterator[tuple[LineRecorder, ThreadedServer]]:
    handler = LineRecorder()
    with ThreadedServer(handler) as server:
        yield handler, server


def read_lines(sock: socket.socket, count: int) -> list[bytes]:
    with sock.makefile("rb") as rfile:
        return [rfile.readline() for _ in range(count)]


def test_reset_when_the_client_sends_a_message() -> None:
    handler = LineRecorder(answer=False)  # an answer could meet the reset first
    server = ThreadedServer(handler).start()
    quit_reset = faults.ResetPeer(direction="upstream", on=faults.Message(LINES, match=b"QUIT"))
    with FaultProxy(server, quit_reset, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"a\nb\nQUIT\nafter\n")  # one send: the trigger cuts inside it
            with pytest.raises(ConnectionResetError), sock.makefile("rb") as rfile:
                while rfile.readline():
                    pass
        proxy.wait_for_connections(1, closed=True)
        # The server got what came before QUIT, and neither QUIT nor what followed.
        assert handler.wait(2) == [b"a\n", b"b\n"]
        assert [str(e).split(" ResetPeer")[0] for e in proxy.log] == [
            "#0 upstream @4: triggered by message 3",
            "#0 upstream @4: reset",
        ]
        assert proxy.connections[0].how_closed == "fault-reset"
    server.stop()
    assert handler.lines == [b"a\n", b"b\n"]


def test_regex_match_and_at_end() -> None:
    handler = LineRecorder(answer=False)
    server = ThreadedServer(handler).start()
    after_exec = faults.ResetPeer(
        direction="upstream",
        on=faults.Message(LINES, match=re.compile(rb"^EXEC\b"), at="end"),
    )
    with FaultProxy(server, after_exec, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"NOT EXEC\nEXEC 1\nnext\n")
            with pytest.raises(ConnectionResetError), sock.makefile("rb") as rfile:
                while rfile.readline():
                    pass
        proxy.wait_for_connections(1, closed=True)
    server.stop()
    # The message that matched went through (at="end"), the reset came right after it.
    assert handler.lines == [b"NOT EXEC\n", b"EXEC 1\n"]


def test_on_the_nth_message_per_connection(
    recorder: tuple[LineRecorder, ThreadedServer],
) -> None:
    _, server = recorder
    second_answer = faults.Corrupt(offsets=(0, 1), on=faults.Message(LINES, nth=2))
    with FaultProxy(server, second_answer, seed=1) as proxy:
        for _ in range(2):  # counted on each connection
            with socket.create_connection(proxy.address, timeout=10) as sock:
                answers = []
                for word in (b"one\n", b"two\n", b"three\n"):
                    sock.sendall(word)
                    answers += read_lines(sock, 1)
            assert answers == [b"ok one\n", b"\x90\x94 two\n", b"ok three\n"]
    assert [e.action for e in proxy.log].count("corrupt") == 4


def test_on_the_nth_message_per_proxy(recorder: tuple[LineRecorder, ThreadedServer]) -> None:
    _, server = recorder
    third_overall = faults.LimitData(3, on=faults.Message(LINES, nth=3, scope="proxy"))
    with FaultProxy(server, third_overall, seed=1) as proxy:
        a = socket.create_connection(proxy.address, timeout=10)
        b = socket.create_connection(proxy.address, timeout=10)
        with a, b:
            a.sendall(b"1\n")
            assert read_lines(a, 1) == [b"ok 1\n"]
            b.sendall(b"2\n")
            assert read_lines(b, 1) == [b"ok 2\n"]
            a.sendall(b"3\n")  # the proxy's third answer: 3 bytes of it, then FIN
            assert recv_exactly(a, 100) == b"ok "
            b.sendall(b"4\n")  # the count is over: b goes on
            assert read_lines(b, 1) == [b"ok 4\n"]


def test_a_trigger_on_the_other_direction(recorder: tuple[LineRecorder, ThreadedServer]) -> None:
    handler, server = recorder
    # Silence the answers from the moment the client says "late".
    silence = faults.Timeout(
        direction="downstream", on=faults.Message(LINES, match=b"late", direction="upstream")
    )
    with FaultProxy(server, silence, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"early\n")
            assert read_lines(sock, 1) == [b"ok early\n"]
            sock.settimeout(0.3)
            sock.sendall(b"late\n")
            assert handler.wait(2)[-1] == b"late\n"  # the server got it and answered
            with pytest.raises(socket.timeout):
                sock.recv(100)
    assert [e.action for e in proxy.log] == [
        "triggered by upstream message 2", "drop from here"
    ]


def test_delay_a_message_on_cue_without_timing(
    recorder: tuple[LineRecorder, ThreadedServer],
) -> None:
    _, server = recorder
    # A long delay of the second answer only: the first and the third are not delayed, and
    # the third waits behind the second (order is kept).
    slow_second = faults.Latency(3600, on=faults.Message(LINES, nth=2))
    with FaultProxy(server, slow_second, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"1\n")
            assert read_lines(sock, 1) == [b"ok 1\n"]
            sock.sendall(b"2\n3\n")
            sock.settimeout(0.3)
            with pytest.raises(socket.timeout):
                sock.recv(100)
            proxy.clear()  # the delayed data keeps its time; a fresh connection is not delayed
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"1\n2\n")
            assert read_lines(sock, 2) == [b"ok 1\n", b"ok 2\n"]


def test_a_stall_on_cue_holds_the_rest_until_removed(
    recorder: tuple[LineRecorder, ThreadedServer],
) -> None:
    handler, server = recorder
    stall = faults.Stall(direction="upstream", on=faults.Message(LINES, match=b"STOP", at="end"))
    with FaultProxy(server, stall, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"a\nSTOP\nb\nc\n")
            assert read_lines(sock, 2) == [b"ok a\n", b"ok STOP\n"]
            sock.settimeout(0.3)
            with pytest.raises(socket.timeout):
                sock.recv(100)
            assert handler.lines == [b"a\n", b"STOP\n"]
            sock.settimeout(10)
            proxy.remove(stall)
            assert read_lines(sock, 2) == [b"ok b\n", b"ok c\n"]
            assert handler.lines == [b"a\n", b"STOP\n", b"b\n", b"c\n"]


def test_no_matching_message_changes_nothing(echo_server: ThreadedServer) -> None:
    never = faults.ResetPeer(direction="both", on=faults.Message(LINES, match=b"never"))
    with FaultProxy(echo_server, never, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            for i in range(50):
                line = b"%d\n" % i * (i + 1)
                sock.sendall(line[:3])
                sock.sendall(line[3:])
                assert recv_exactly(sock, len(line)) == line
            sock.sendall(b"no newline at the end")
            sock.shutdown(socket.SHUT_WR)  # the incomplete tail is passed on at EOF
            assert recv_exactly(sock, 100) == b"no newline at the end"
    assert proxy.log == []


def test_triggers_added_and_removed_live(echo_server: ThreadedServer) -> None:
    with FaultProxy(echo_server, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"half")
            assert recv_exactly(sock, 4) == b"half"
            fault = faults.Corrupt(offsets=(0,), on=faults.Message(LINES, match=b"x"))
            with proxy.add(fault):
                sock.sendall(b" line\nx\n")  # framing starts where it was added
                assert recv_exactly(sock, 8) == b" line\n\x87\n"
                sock.sendall(b"par")
            sock.sendall(b"tial\n")  # the partial message goes on once framing stops
            assert recv_exactly(sock, 8) == b"partial\n"


def test_probability_is_seeded_and_replays(echo_server: ThreadedServer) -> None:
    def run(seed: int) -> list[str]:
        coin = faults.Corrupt(offsets=(0,), probability=0.5, on=faults.Message(LINES))
        with FaultProxy(echo_server, coin, seed=seed) as proxy:
            for _ in range(8):
                with socket.create_connection(proxy.address, timeout=10) as sock:
                    sock.sendall(b"a\nb\n")
                    recv_exactly(sock, 4)
            return [str(e) for e in proxy.log]

    first = run(7)
    assert first == run(7)
    assert {"chosen", "skipped"} <= {line.split(": ")[1].split(" ")[0] for line in first}
    assert sum("corrupt" in line for line in first) == 2 * sum(
        ": chosen" in line for line in first
    )  # each message of a chosen connection


def test_framings_must_agree_on_a_direction(echo_server: ThreadedServer) -> None:
    with FaultProxy(echo_server, faults.Latency(0, on=faults.Message(LINES)), seed=1) as proxy:
        with pytest.raises(ValueError, match="already cut into messages by Lines"):
            proxy.add(faults.ResetPeer(on=faults.Message(faults.RESP())))
        with pytest.raises(ValueError, match="already cut into messages"):
            proxy.hold("downstream", faults.HTTP())
        assert len(proxy.faults) == 1
        with proxy.hold("upstream", faults.RESP()):  # the other direction is free
            pass


def test_a_message_over_the_cap_fails_the_test(echo_server: ThreadedServer) -> None:
    capped = faults.Latency(0, direction="upstream", on=faults.Message(faults.Lines(max_size=64)))
    proxy = FaultProxy(echo_server, capped, seed=1).start()
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"x" * 100)
        with pytest.raises(ConnectionResetError):  # the proxy reset the connection
            sock.recv(100)
    with pytest.raises(ProxyError, match=r"FramingError.*a message over max_size=64"):
        proxy.stop()


# -- hold and release -----------------------------------------------------------------------


@pytest.mark.parametrize("first", [0, 1])
def test_hold_decides_which_request_reaches_the_server_first(
    recorder: tuple[LineRecorder, ThreadedServer], first: int
) -> None:
    handler, server = recorder
    with FaultProxy(server, seed=1) as proxy, proxy.hold("upstream", LINES) as hold:
        clients = [socket.create_connection(proxy.address, timeout=10) for _ in range(2)]
        try:
            clients[0].sendall(b"from A\n")
            clients[1].sendall(b"from B\n")
            held = hold.wait_held(2, timeout=10)
            assert handler.lines == []
            by_text = {m.data: m for m in held}
            order = [b"from A\n", b"from B\n"] if first == 0 else [b"from B\n", b"from A\n"]
            by_text[order[0]].release()
            assert handler.wait(1) == order[:1]
            by_text[order[1]].release()
            assert handler.wait(2) == order
            assert hold.held == []
        finally:
            for sock in clients:
                sock.close()


def test_hold_release_n_drop_and_stop(recorder: tuple[LineRecorder, ThreadedServer]) -> None:
    handler, server = recorder
    with FaultProxy(server, seed=1) as proxy:
        hold = proxy.hold("upstream", LINES)
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"1\n2\n3\n4\n")
            assert [m.data for m in hold.wait_held(4)] == [b"1\n", b"2\n", b"3\n", b"4\n"]
            with pytest.raises(ValueError, match="count=5 but 4 message"):
                hold.release(5)
            assert [m.index for m in hold.release(1)] == [1]
            assert handler.wait(1) == [b"1\n"]
            dropped = hold.drop(1)
            assert dropped[0].state == "dropped"
            with pytest.raises(RuntimeError, match="no longer held"):
                dropped[0].release()
            hold.stop()  # releases 3 and 4, and holds no more
            sock.sendall(b"5\n")
            assert handler.wait(4) == [b"1\n", b"3\n", b"4\n", b"5\n"]
            assert read_lines(sock, 4) == [b"ok 1\n", b"ok 3\n", b"ok 4\n", b"ok 5\n"]
        assert [e.action for e in proxy.log] == [
            "hold message 1 (2 bytes)", "hold message 2 (2 bytes)", "hold message 3 (2 bytes)",
            "hold message 4 (2 bytes)", "release message 1", "drop message 2",
            "release message 3", "release message 4",
        ]


def test_hold_waits_are_bounded_and_values_checked(echo_server: ThreadedServer) -> None:
    with FaultProxy(echo_server, seed=1) as proxy:
        with pytest.raises(ValueError, match="direction must be 'upstream' or 'downstream'"):
            proxy.hold("both", LINES)
        with pytest.raises(TypeError, match="direction must be"):
            proxy.hold(1, LINES)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="framing must be a Framing"):
            proxy.hold("upstream", b"\n")  # type: ignore[arg-type]
        with proxy.hold("downstream", LINES) as hold:
            with pytest.raises(ValueError, match="already held"):
                proxy.hold("downstream", LINES)
            with pytest.raises(TimeoutError, match=r"waited 0\.1s for 1 held downstream"):
                hold.wait_held(1, timeout=0.1)
            with pytest.raises(ValueError, match="timeout"):
                hold.wait_held(1, timeout=float("nan"))
            with pytest.raises(ValueError, match=r"timeout must be .* and <= 9\.22"):
                hold.wait_held(1, timeout=1e300)  # was OverflowError from the wait
            with pytest.raises(TypeError, match="count must be an int"):
                hold.release("1")  # type: ignore[arg-type]


def test_stopping_the_proxy_with_messages_held(echo_server: ThreadedServer) -> None:
    proxy = FaultProxy(echo_server, seed=1).start()
    hold = proxy.hold("downstream", LINES)
    with socket.create_connection(proxy.address, timeout=10) as sock:
        sock.sendall(b"x\n")
        (message,) = hold.wait_held(1)
        proxy.stop()
        assert recv_exactly(sock, 10) == b""  # closed, the held answer never sent
    assert message.state == "closed"
    assert hold.held == []
    hold.stop()  # after the proxy: nothing left to do, no error
    hold.stop()


def test_length_prefixed_through_the_proxy(echo_server: ThreadedServer) -> None:
    framing = faults.LengthPrefixed("!H")
    # Cut the answer whose body holds "bad" after its 2-byte header and 1 byte of the body.
    cut = faults.LimitData(3, on=faults.Message(framing, match=b"bad"))
    with FaultProxy(echo_server, cut, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"\0\4good")
            assert recv_exactly(sock, 6) == b"\0\4good"
            sock.sendall(b"\0\3bad\0\4more")
            assert recv_exactly(sock, 100) == b"\0\3b"


def test_an_upstream_trigger_leaves_the_downstream_bytes_alone(
    echo_server: ThreadedServer,
) -> None:
    # Only the upstream direction is cut into messages; answers without newlines still flow.
    never = faults.ResetPeer(direction="upstream", on=faults.Message(LINES, match=b"never"))
    with FaultProxy(echo_server, never, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"abc\n")
            assert recv_exactly(sock, 4) == b"abc\n"
            sock.sendall(b"a" * 100_000 + b"\n")
            assert recv_exactly(sock, 100_001) == b"a" * 100_000 + b"\n"
    assert proxy.connections[0].bytes_downstream == 100_005


def test_a_held_message_of_a_closed_connection_is_forgotten(echo_server: ThreadedServer) -> None:
    with FaultProxy(echo_server, seed=1) as proxy, proxy.hold("upstream", LINES) as hold:
        sock = socket.create_connection(proxy.address, timeout=10)
        sock.sendall(b"x\n")
        (message,) = hold.wait_held(1)
        proxy.down(reset_connections=True)
        sock.close()
        assert hold.held == []
        assert message.state == "closed"


# -- HTTP --------------------------------------------------------------------------------------

BODY = b"0123456789" * 10


def test_http_cut_the_body_of_the_second_response_in_half() -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: keep-alive\r\n\r\n"
    with ThreadedServer(handlers.HTTPResponder(BODY)) as server:
        with FaultProxy(server, seed=1) as proxy:
            conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
            try:
                conn.request("GET", "/")
                first = conn.getresponse()
                assert first.read() == BODY
                # Cut the next response: its head and half its body, then FIN.
                proxy.add(faults.LimitData(len(head) + 50, on=faults.Message(faults.HTTP())))
                conn.request("GET", "/")
                second = conn.getresponse()
                with pytest.raises(http.client.IncompleteRead) as info:
                    second.read()
                assert info.value.partial == BODY[:50]
            finally:
                conn.close()


def test_http_framing_on_the_nth_response_with_a_chunked_body() -> None:
    chunked = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")

    def serve(conn: ServerConnection) -> None:
        with conn.makefile("rb") as rfile:
            while line := rfile.readline():
                if line == b"\r\n":
                    conn.sendall(chunked)

    second = faults.Corrupt(offsets=(len(chunked) - 12,), mask=0x20,
                            on=faults.Message(faults.HTTP(), nth=2))
    with ThreadedServer(serve) as server, FaultProxy(server, second, seed=1) as proxy:
        conn = http.client.HTTPConnection(proxy.host, proxy.port, timeout=10)
        try:
            bodies = []
            for _ in range(3):
                conn.request("GET", "/")
                bodies.append(conn.getresponse().read())
        finally:
            conn.close()
    assert bodies == [b"hello world", b"hello World", b"hello world"]


# -- inside the TLS handshake --------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_ca_module() -> Iterator[CertificateAuthority]:
    with CertificateAuthority() as ca:
        yield ca


@pytest.fixture
def tls_server(tls_ca_module: CertificateAuthority) -> Iterator[ThreadedServer]:
    with ThreadedServer(handlers.echo, ssl_context=tls_ca_module.server_context()) as server:
        yield server


def handshake(proxy: FaultProxy, ca: CertificateAuthority, timeout: float = 10.0) -> bytes:
    context = ca.client_context()
    with socket.create_connection(proxy.address, timeout=timeout) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            return recv_exactly(tls, 4)


def test_tls_stall_after_the_client_hello_times_the_handshake_out(
    tls_server: ThreadedServer, tls_ca_module: CertificateAuthority
) -> None:
    stall = faults.Timeout(direction="downstream", on=faults.tls_client_hello())
    with FaultProxy(tls_server, stall, seed=1) as proxy:
        with pytest.raises(socket.timeout, match="handshake operation timed out"):
            handshake(proxy, tls_ca_module, timeout=0.5)
        events = [str(e).split(" Timeout")[0] for e in proxy.log]
        assert events == ["#0 downstream @0: triggered by upstream message 1",
                          "#0 downstream @0: drop from here"]
        proxy.clear()
        assert handshake(proxy, tls_ca_module) == b"ping"


@pytest.mark.parametrize("fault", [faults.ResetPeer, faults.LimitData])
def test_tls_reset_or_close_after_the_server_hello(
    tls_server: ThreadedServer, tls_ca_module: CertificateAuthority, fault: type
) -> None:
    cut = fault(0, on=faults.tls_server_hello(at="end"))
    with FaultProxy(tls_server, cut, seed=1) as proxy:
        error = ConnectionResetError if fault is faults.ResetPeer else ssl.SSLError
        with pytest.raises((error, ssl.SSLEOFError)) as info:
            handshake(proxy, tls_ca_module)
        if fault is faults.ResetPeer:
            assert isinstance(info.value, ConnectionResetError)
        else:
            assert "EOF" in str(info.value)
        offset = proxy.log[0].offset
        assert offset > 40  # after the whole ServerHello record
        assert proxy.connections[0].bytes_downstream >= offset


def test_tls_corrupt_a_handshake_record(
    tls_server: ThreadedServer, tls_ca_module: CertificateAuthority
) -> None:
    flip = faults.Corrupt(offsets=(11,), on=faults.tls_server_hello())  # in server_random
    with FaultProxy(tls_server, flip, seed=1) as proxy:
        with pytest.raises(ssl.SSLError):
            handshake(proxy, tls_ca_module)
        # (then the client's alert resets the connection)
        assert [e.action for e in proxy.log][:2] == ["triggered by message 1", "corrupt"]
        assert proxy.log[1].offset == 11


def test_tls_http_client_through_a_no_match_trigger(
    tls_ca_module: CertificateAuthority,
) -> None:
    responder = handlers.HTTPResponder(BODY)
    server = ThreadedServer(responder, ssl_context=tls_ca_module.server_context())
    never = faults.ResetPeer(direction="both", on=faults.Message(
        faults.TLSRecords(), match=faults.TLSRecords.handshake(254)))
    with server, FaultProxy(server, never, seed=1) as proxy:
        conn = http.client.HTTPSConnection(proxy.host, proxy.port, timeout=10,
                                           context=tls_ca_module.client_context())
        try:
            for _ in range(3):
                conn.request("GET", "/")
                assert conn.getresponse().read() == BODY
        finally:
            conn.close()
    assert len(responder.requests) == 3


def test_an_equal_framing_takes_over_mid_message(echo_server: ThreadedServer) -> None:
    first = faults.Corrupt(offsets=(0,), on=faults.Message(faults.Lines(), match=b"a"))
    second = faults.Corrupt(offsets=(1,), on=faults.Message(faults.Lines(), match=b"b"))
    with FaultProxy(echo_server, first, second, seed=1) as proxy:
        with socket.create_connection(proxy.address, timeout=10) as sock:
            sock.sendall(b"q\nxa")
            assert recv_exactly(sock, 2) == b"q\n"  # so the proxy has read "xa" too
            proxy.remove(first)  # the partial line stays in the (equal) framing
            sock.sendall(b"b\n")
            assert recv_exactly(sock, 4) == b"x\x9eb\n"  # one message: only `second` acts


# -- requests ---------------------------------------------------------------------------------


def test_requests_sees_the_second_response_cut() -> None:
    head_and_half = len(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n"
                        b"Connection: keep-alive\r\n\r\n") + 50
    cut = faults.LimitData(head_and_half, on=faults.Message(faults.HTTP(), nth=2))
    with ThreadedServer(handlers.HTTPResponder(BODY)) as server, FaultProxy(
        server, cut, seed=1
    ) as proxy, requests.Session() as session:
        assert session.get(proxy.url + "/", timeout=10).content == BODY
        with pytest.raises(requests.exceptions.ChunkedEncodingError, match="IncompleteRead"):
            session.get(proxy.url + "/", timeout=10)


def test_requests_hold_orders_two_clients() -> None:
    responder = handlers.HTTPResponder(b"ok")
    errors: list[BaseException] = []

    def get(session: requests.Session, path: str) -> None:
        try:
            session.get(proxy.url + path, timeout=10)
        except BaseException as exc:  # asserted below
            errors.append(exc)

    with ThreadedServer(responder) as server, FaultProxy(server, seed=1) as proxy:
        sessions = {"/a": requests.Session(), "/b": requests.Session()}
        try:
            with proxy.hold("upstream", faults.HTTP()) as hold:
                threads = {path: threading.Thread(target=get, args=(session, path))
                           for path, session in sessions.items()}
                threads["/a"].start()
                hold.wait_held(1)
                threads["/b"].start()
                first, second = hold.wait_held(2)
                assert first.data.startswith(b"GET /a ") and second.data.startswith(b"GET /b ")
                second.release()  # /b first: its answer comes back before /a is let go
                threads["/b"].join(10)
                assert [r.path for r in responder.requests] == ["/b"]
                first.release()
                threads["/a"].join(10)
        finally:
            for session in sessions.values():
                session.close()
    assert not errors
    assert not any(t.is_alive() for t in threads.values())
    assert [r.path for r in responder.requests] == ["/b", "/a"]


def test_requests_tls_handshake_errors(
    tls_ca_module: CertificateAuthority,
) -> None:
    server = ThreadedServer(handlers.HTTPResponder(b"ok"),
                            ssl_context=tls_ca_module.server_context())
    with server, FaultProxy(server, seed=1) as proxy, requests.Session() as session:
        # verify= on each call: a session's own is overridden by REQUESTS_CA_BUNDLE if set
        bundle = tls_ca_module.ca_bundle_path()
        url = f"https://localhost:{proxy.port}/"
        assert session.get(url, verify=bundle, timeout=10).content == b"ok"
        session.close()  # a new connection (and handshake) for each case
        with proxy.add(faults.Timeout(direction="downstream", on=faults.tls_client_hello())):
            with pytest.raises(requests.exceptions.Timeout) as info:
                session.get(url, verify=bundle, timeout=0.5)
            assert "timed out" in str(info.value)
        session.close()
        with proxy.add(faults.ResetPeer(on=faults.tls_server_hello(at="end"))):
            with pytest.raises(requests.exceptions.ConnectionError,
                               match="Connection reset by peer"):
                session.get(url, verify=bundle, timeout=10)
        session.close()
        assert session.get(url, verify=bundle, timeout=10).content == b"ok"
