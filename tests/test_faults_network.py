"""Network partitions through real sockets: the kit's servers, and redis-server replication.

No test asserts an upper bound on time. "Nothing arrives while cut" is checked with a short
read timeout: a cut link can never deliver, so a busy machine cannot make such a check
pass or fail by chance; what must arrive is waited for with a generous timeout.
"""

from __future__ import annotations

import os
import pathlib
import queue
import select
import shutil
import signal
import socket
import subprocess
import textwrap
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from pytest_netthreads import ServerConnection, ThreadedServer, handlers
from pytest_netthreads._runtime.reactor import get_reactor
from pytest_netthreads.faults import Cut, Latency, Network
from tests._util import recv_exactly

pytestmark = pytest.mark.usefixtures("_reactor_running", "no_thread_or_fd_leak")

QUIET = 0.3  # seconds a cut link is watched for bytes that must not come

REDIS_SERVER = shutil.which("redis-server")


@pytest.fixture(scope="module")
def _reactor_running() -> None:
    get_reactor().start()


def _connect(address: tuple[str, int], timeout: float = 10.0) -> socket.socket:
    return socket.create_connection(address, timeout=timeout)


def _silent(sock: socket.socket) -> bool:
    """Nothing arrives on ``sock`` for QUIET seconds (and it is not closed or reset)."""
    sock.settimeout(QUIET)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(10)
    return False


@pytest.fixture
def three() -> Iterator[Network]:
    """Three echo nodes a, b, c and a client-only node."""
    with ThreadedServer(handlers.echo, concurrency="selector") as a, ThreadedServer(
        handlers.echo, concurrency="selector"
    ) as b, ThreadedServer(handlers.echo, concurrency="selector") as c, Network(
        {"a": a, "b": b, "c": c, "client": None}, seed=3
    ) as net:
        yield net


def test_each_pair_has_its_own_link(three: Network) -> None:
    addresses = {three.address(src, dst) for src, dst in three.links()}
    assert len(addresses) == len(three.links()) == 9  # 4 sources x 3 servers, minus self
    with _connect(three.address("client", "a")) as sock:
        sock.sendall(b"hello")
        assert recv_exactly(sock, 5) == b"hello"
    assert three.proxy("client", "a").wait_for_connections(1)[0].bytes_upstream == 5
    assert three.proxy("b", "a").connections == []


def test_partition_stalls_open_connections_and_heal_delivers_the_held_bytes(
    three: Network,
) -> None:
    ab = _connect(three.address("a", "b"))
    ba = _connect(three.address("b", "a"))
    with ab, ba:
        ab.sendall(b"1")
        ba.sendall(b"1")
        assert recv_exactly(ab, 1) == recv_exactly(ba, 1) == b"1"
        three.partition({"a"}, {"b", "c"})
        assert three.blocked("a", "b") and three.blocked("b", "a") and three.blocked("c", "a")
        assert not three.blocked("b", "c")
        ab.sendall(b"held-ab")
        ba.sendall(b"held-ba")
        assert _silent(ab) and _silent(ba)
        # Inside one side, and from the client-only node, everything still flows.
        with _connect(three.address("b", "c")) as bc, _connect(
            three.address("client", "a")
        ) as ca:
            bc.sendall(b"bc")
            ca.sendall(b"ca")
            assert recv_exactly(bc, 2) == b"bc"
            assert recv_exactly(ca, 2) == b"ca"
        three.heal()
        assert three.cuts == []
        # Nothing was lost: the held bytes arrive, in order, then the stream goes on.
        assert recv_exactly(ab, 7) == b"held-ab"
        assert recv_exactly(ba, 7) == b"held-ba"
        ab.sendall(b"after")
        assert recv_exactly(ab, 5) == b"after"


def test_new_connections_across_a_partition_are_held_until_the_heal(three: Network) -> None:
    three.partition("a", "c")
    with _connect(three.address("c", "a")) as sock:  # the link's listener accepts it...
        sock.sendall(b"ping")
        assert _silent(sock)  # ...but no byte goes through
        assert three.proxy("c", "a").wait_for_connections(1)[0].bytes_upstream == 0
        three.heal()
        assert recv_exactly(sock, 4) == b"ping"


def _recording_server(got: queue.Queue[bytes]) -> ThreadedServer:
    """Puts each line it reads on ``got`` and answers ``ack:<line>``."""

    def handler(conn: ServerConnection) -> None:
        with conn.makefile("rb") as lines:
            for line in lines:
                got.put(line)
                conn.sendall(b"ack:" + line)

    return ThreadedServer(handler)


def test_one_way_blocks_what_src_sends_and_lets_what_dst_sends_through() -> None:
    got_a: queue.Queue[bytes] = queue.Queue()
    got_b: queue.Queue[bytes] = queue.Queue()
    with _recording_server(got_a) as a, _recording_server(got_b) as b, Network(
        {"a": a, "b": b}, seed=1
    ) as net:
        ab = _connect(net.address("a", "b"))  # a is the client: a's requests go to b
        ba = _connect(net.address("b", "a"))  # b is the client: b's requests go to a
        with ab, ba:
            for sock, got in ((ab, got_b), (ba, got_a)):  # both connections are through
                sock.sendall(b"hi\n")
                assert recv_exactly(sock, 7) == b"ack:hi\n"
                assert got.get(timeout=10) == b"hi\n"
            net.one_way("a", "b")
            assert net.blocked("a", "b") and not net.blocked("b", "a")
            ab.sendall(b"from-a\n")
            ba.sendall(b"from-b\n")
            # b's request reaches a's server; a's request and a's answer do not reach b.
            assert got_a.get(timeout=10) == b"from-b\n"
            assert _silent(ba)
            with pytest.raises(queue.Empty):
                got_b.get(timeout=QUIET)
            net.heal()
            assert got_b.get(timeout=10) == b"from-a\n"
            assert recv_exactly(ab, 11) == b"ack:from-a\n"
            assert recv_exactly(ba, 11) == b"ack:from-b\n"


def test_reset_mode_resets_open_connections_and_refuses_new_ones(three: Network) -> None:
    ab = _connect(three.address("a", "b"))
    ba = _connect(three.address("b", "a"))
    bc = _connect(three.address("b", "c"))
    with ab, ba, bc:
        three.one_way("a", "b", mode="reset")  # a TCP connection needs both directions
        for sock in (ab, ba):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
        for src, dst in (("a", "b"), ("b", "a")):
            with pytest.raises(ConnectionRefusedError):
                _connect(three.address(src, dst))
        bc.sendall(b"bc")  # other links keep their connections
        assert recv_exactly(bc, 2) == b"bc"
    three.heal()
    with _connect(three.address("a", "b")) as again:
        again.sendall(b"x")
        assert recv_exactly(again, 1) == b"x"


def test_a_cut_heals_alone_and_cuts_add_up(three: Network) -> None:
    with three.partition({"a"}, {"b"}) as first:
        assert isinstance(first, Cut)
        second = three.one_way("c", "b")
        assert three.cuts == [first, second]
        assert "{a} | {b}" in repr(first)
    assert three.cuts == [second]
    assert not three.blocked("a", "b") and three.blocked("c", "b")
    with _connect(three.address("a", "b")) as sock:
        sock.sendall(b"ok")
        assert recv_exactly(sock, 2) == b"ok"
    second.heal()
    second.heal()  # idempotent
    assert three.cuts == []


def test_a_link_takes_its_own_faults(three: Network) -> None:
    three.proxy("a", "b").add(Latency(0.01))
    with _connect(three.address("a", "b")) as ab, _connect(three.address("c", "b")) as cb:
        ab.sendall(b"x")
        cb.sendall(b"y")
        assert recv_exactly(ab, 1) == b"x" and recv_exactly(cb, 1) == b"y"
    assert [e.action for e in three.proxy("a", "b").log] == ["applied"]
    assert three.proxy("c", "b").log == []


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda n: n.partition({"a"}), ValueError, "at least 2 groups"),
        (lambda n: n.partition({"a"}, set()), ValueError, "group 1 is empty"),
        (lambda n: n.partition({"a", "b"}, {"b"}), ValueError, "disjoint: 'b'"),
        (lambda n: n.partition({"a"}, {"zz"}), ValueError, "no node named 'zz'"),
        (lambda n: n.partition({"a"}, {1}), TypeError, "node name"),
        (lambda n: n.partition({"a"}, 5), TypeError, "sets of node names"),
        (lambda n: n.partition({"a"}, {"b"}, mode="drop"), ValueError, "mode must be one of"),
        (lambda n: n.partition({"a"}, {"b"}, mode=None), TypeError, "mode must be one of"),
        (lambda n: n.one_way("a", "a"), ValueError, "different nodes"),
        (lambda n: n.one_way("a", ""), ValueError, "non-empty"),
        (lambda n: n.address("a", "client"), ValueError, "client-only node"),
        (lambda n: n.address("a", "nope"), ValueError, "no node named 'nope'"),
    ],
)
def test_bad_arguments_fail_at_the_call(
    three: Network, call: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(three)  # type: ignore[operator]
    assert three.cuts == []


@pytest.mark.parametrize(
    ("nodes", "kwargs", "error", "match"),
    [
        ([("a", None)], {}, TypeError, "mapping of node name"),
        ({"a": ("127.0.0.1", 1)}, {}, ValueError, "at least 2 nodes"),
        ({"a": None, 3: None}, {}, TypeError, "node name"),
        ({"a": None, "b": ("127.0.0.1", 0)}, {}, ValueError, "port"),
        ({"a": None, "b": 42}, {}, TypeError, "target must be"),
        ({"a": None, "b": None}, {"seed": 1.5}, TypeError, "seed must be an int"),
        ({"a": None, "b": None}, {"seed": True}, TypeError, "seed must be an int"),
    ],
)
def test_bad_nodes_fail_when_made(
    nodes: object, kwargs: dict[str, object], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        Network(nodes, **kwargs)  # type: ignore[arg-type]


def test_cut_before_start_and_second_start_are_errors() -> None:
    net = Network({"a": ("127.0.0.1", 9), "b": None})
    with pytest.raises(RuntimeError, match="not running"):
        net.partition("a", "b")
    with pytest.raises(RuntimeError, match="no addresses until start"):
        net.address("b", "a")
    with net:
        with pytest.raises(RuntimeError, match="already started"):
            net.start()


def test_link_seeds_follow_the_network_seed() -> None:
    nodes = {"a": ("127.0.0.1", 9), "b": ("127.0.0.1", 10)}
    one, two, other = Network(nodes, seed=5), Network(nodes, seed=5), Network(nodes, seed=6)
    assert [p.seed for p in one.proxies] == [p.seed for p in two.proxies]
    assert [p.seed for p in one.proxies] != [p.seed for p in other.proxies]
    assert len({p.seed for p in one.proxies}) == 2


# -- redis-server replication through the network ------------------------------------------


def _start_redis(workdir: pathlib.Path) -> tuple[subprocess.Popen[bytes], int]:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    proc = subprocess.Popen(
        [REDIS_SERVER or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
         "--save", "", "--appendonly", "no", "--protected-mode", "no",
         "--repl-diskless-sync", "no", "--repl-timeout", "60",
         # A replica saves what the primary sends it in its directory, "--save" or not.
         "--dir", str(workdir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + 20
    seen = b""
    while b"Ready to accept connections" not in seen:
        left = deadline - time.monotonic()
        if left <= 0 or proc.poll() is not None:
            _stop(proc)
            raise RuntimeError(f"redis-server did not start on port {port}:\n{seen.decode()}")
        if select.select([proc.stdout], [], [], left)[0]:
            seen += os.read(proc.stdout.fileno(), 65536)
    return proc, port


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture
def replication(tmp_path: pathlib.Path) -> Iterator[Network]:
    """redis-server primary and replica; the replica follows the primary through the network."""
    if REDIS_SERVER is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server; .ci/run does)")
    procs = []
    try:
        for name in ("primary", "replica"):
            (tmp_path / name).mkdir()
            procs.append(_start_redis(tmp_path / name))
        (_, primary), (_, replica) = procs
        nodes = {"primary": ("127.0.0.1", primary), "replica": ("127.0.0.1", replica),
                 "client": None}
        with Network(nodes, seed=11) as net:
            host, port = net.address("replica", "primary")
            with _redis(net, "replica") as r:
                r.replicaof(host, port)
                _wait_link(r, "up")
            yield net
    finally:
        for proc, _ in procs:
            _stop(proc)


def _redis(net: Network, node: str) -> redis.Redis:
    host, port = net.address("client", node)
    return redis.Redis(host=host, port=port, socket_timeout=30, retry=Retry(NoBackoff(), 0))


def _wait_link(replica: redis.Redis, status: str) -> None:
    """Until the replica reports its link to the primary ``status`` (bounded)."""
    deadline = time.monotonic() + 30
    while replica.info("replication")["master_link_status"] != status:
        assert time.monotonic() < deadline, f"replica link never became {status}"
        time.sleep(0.05)


def test_redis_replica_falls_behind_in_a_partition_and_catches_up_on_heal(
    replication: Network,
) -> None:
    net = replication
    with _redis(net, "primary") as primary, _redis(net, "replica") as replica:
        primary.set("k", "1")
        assert primary.wait(1, 30000) == 1
        assert replica.get("k") == b"1"
        net.partition({"primary"}, {"replica"})
        primary.set("k", "2")
        # No acknowledgement can come through the cut, however long WAIT waits.
        assert primary.wait(1, int(QUIET * 1000)) == 0
        assert replica.get("k") == b"1"  # the client node still reaches both
        # The stalled stream is the same connection: TCP kept it, nothing was re-synced.
        assert replica.info("replication")["master_link_status"] == "up"
        net.heal()
        assert primary.wait(1, 30000) == 1
        assert replica.get("k") == b"2"


def test_redis_replica_link_resets_in_a_reset_partition(replication: Network) -> None:
    net = replication
    with _redis(net, "primary") as primary, _redis(net, "replica") as replica:
        net.partition({"primary"}, {"replica"}, mode="reset")
        _wait_link(replica, "down")  # the reset reached it; reconnecting is refused
        primary.set("k", "after-reset")
        assert replica.get("k") is None
        net.heal()
        _wait_link(replica, "up")
        assert primary.wait(1, 30000) == 1
        assert replica.get("k") == b"after-reset"


# -- the fixture ---------------------------------------------------------------------------


def test_fault_network_fixture_reports_cuts_and_seed_on_failure(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        textwrap.dedent(
            """
            import socket

            def test_cut(fault_network, echo_server):
                net = fault_network({"a": echo_server, "me": None}, seed=42)
                net.partition({"a"}, {"me"})
                sock = socket.create_connection(net.address("me", "a"), timeout=10)
                sock.sendall(b"x")
                sock.settimeout(0.3)
                sock.recv(1)  # TimeoutError: the cut holds the bytes

            def test_ok(fault_network, echo_server):
                net = fault_network({"a": echo_server, "me": None})
                assert net.seed == 5  # --fault-seed, without seed=
                with socket.create_connection(net.address("me", "a"), timeout=10) as s:
                    s.sendall(b"y")
                    assert s.recv(1) == b"y"
            """
        )
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--fault-seed=5",
                                           timeout=120)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*TimeoutError*",
            "*fault network 0 (call)*",
            "network seed=42; cuts: [<Cut {a} | {me} (stall)>]",
            "*fault proxy me->a: seed=*",
            "*#0 connection @0: hold HoldConnect(*",
            "replay with: pytest --fault-seed=42 (or seed=42)",
        ]
    )
