"""``fault_proxy`` and ``socket_faults``: a failed test shows its proxies' seeds and logs."""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator
from typing import Any

import pytest

from ..faults import FaultProxy, Network, ProxyError, SocketFaults
from . import _config
from ._servers import interrupted, print_after_interrupt
from ._summary import record

# Fault proxies a test's fixtures started: checked for proxy errors after the call phase, and
# their seed and fault log added to the report of a failed test.
_FAULT_PROXIES = pytest.StashKey[list[FaultProxy]]()
# The same for the networks of ``fault_network`` (one report section a network).
_FAULT_NETWORKS = pytest.StashKey[list[Network]]()
# The test's socket_faults, and whether its call phase failed (then a rule that matched no
# socket is shown in the report, as a likely cause, rather than failing the teardown too).
_SOCKET_FAULTS = pytest.StashKey[SocketFaults]()
_CALL_FAILED = pytest.StashKey[bool]()


def add_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--fault-seed",
        type=int,
        default=None,
        dest="fault_seed",
        metavar="SEED",
        help="seed for every fault proxy without an explicit seed= (a failed test shows the "
        "seed it used; pass it here to replay the same faults).",
    )
    parser.addini("fault_seed", "like --fault-seed (an int; empty: a random seed)", default="")


def configure(config: pytest.Config) -> None:
    _config.integer(config, "fault_seed")  # a bad value is a usage error at start


class _FaultsPlugin:
    """Registered the first time a test uses ``fault_proxy`` or ``socket_faults`` (so it
    costs nothing before)."""

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, object, object]:
        try:
            return (yield)
        finally:
            for proxy in item.stash.get(_FAULT_PROXIES, []):
                proxy.check()
            for network in item.stash.get(_FAULT_NETWORKS, []):
                network.check()

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        socket_faults = item.stash.get(_SOCKET_FAULTS, None)
        if socket_faults is not None and report.when in ("setup", "call") and report.failed:
            item.stash[_CALL_FAILED] = True
            unmatched = socket_faults.format_unmatched()
            if unmatched:
                report.sections.append((f"socket_faults ({report.when})", unmatched))
        proxies = item.stash.get(_FAULT_PROXIES, [])
        if report.failed and proxies:
            for proxy in proxies:
                text = proxy.format_log()
                text += f"\nreplay with: pytest --fault-seed={proxy.seed} (or seed={proxy.seed})"
                report.sections.append((f"fault proxy {proxy.name} ({report.when})", text))
                record(item, "fault_seed", f"{proxy.name} seed={proxy.seed}")
        networks = item.stash.get(_FAULT_NETWORKS, [])
        if report.failed and networks:
            for i, network in enumerate(networks):
                seed = network.seed
                text = network.format_log()
                text += f"\nreplay with: pytest --fault-seed={seed} (or seed={seed})"
                report.sections.append((f"fault network {i} ({report.when})", text))
                record(item, "fault_seed", f"network {i} seed={network.seed}")
        if report.failed and (proxies or networks) and report.when == "teardown":
            # made before this; the summary reads this one
            report.user_properties = list(item.user_properties)
        return report


@pytest.fixture
def fault_proxy(request: pytest.FixtureRequest) -> Iterator[Callable[..., FaultProxy]]:
    """``fault_proxy(target, *faults, seed=None, **options)`` starts a :class:`FaultProxy`.

    ``target`` is an address or any object with ``.address`` (``echo_server``, a server from
    ``server_factory``...). Clients connect to the returned proxy's ``.address``. Without a
    ``seed`` it uses ``--fault-seed`` (ini ``fault_seed``), else a random one; a failed test
    reports the seed and the fault log. Proxy errors fail the test; all stop at teardown.
    """
    config = request.config
    _register(config)
    default_seed = _config.integer(config, "fault_seed")
    node = request.node
    proxies = node.stash.setdefault(_FAULT_PROXIES, [])

    def make(target: object, *faults: Any, seed: int | None = None, **options: Any) -> FaultProxy:
        proxy = FaultProxy(
            target, *faults, seed=default_seed if seed is None else seed, **options
        ).start()
        proxies.append(proxy)
        return proxy

    yield make
    errors: list[ProxyError] = []
    for proxy in proxies:
        try:
            proxy.stop()
        except ProxyError as exc:
            errors.append(exc)
    if errors and interrupted():
        for error in errors:
            print_after_interrupt(error)
    elif errors:
        raise errors[0]


def _register(config: pytest.Config) -> None:
    if not config.pluginmanager.has_plugin("netthreads-faults"):
        config.pluginmanager.register(_FaultsPlugin(), "netthreads-faults")


@pytest.fixture
def fault_network(request: pytest.FixtureRequest) -> Iterator[Callable[..., Network]]:
    """``fault_network(nodes, seed=None, **options)`` starts a :class:`Network`.

    ``nodes`` maps node names to targets (``None`` for a client-only node); node ``a``
    reaches ``b`` at ``network.address("a", "b")``. Seeds as ``fault_proxy``; a failed
    test reports the network's cuts and its links' fault logs; all stop at teardown.
    """
    config = request.config
    _register(config)
    default_seed = _config.integer(config, "fault_seed")
    networks = request.node.stash.setdefault(_FAULT_NETWORKS, [])

    def make(nodes: Any, *, seed: int | None = None, **options: Any) -> Network:
        network = Network(nodes, seed=default_seed if seed is None else seed, **options)
        network.start()
        networks.append(network)
        return network

    yield make
    errors: list[ProxyError] = []
    for network in networks:
        try:
            network.stop()
        except ProxyError as exc:
            errors.append(exc)
    if errors and interrupted():
        for error in errors:
            print_after_interrupt(error)
    elif errors:
        raise errors[0]


@pytest.fixture
def socket_faults(request: pytest.FixtureRequest) -> Iterator[SocketFaults]:
    """In-process faults on the sockets the test's code connects (:class:`SocketFaults`).

    ``socket_faults.add(faults.RecvChunks([1, 2]), address=server.address)``; undone at
    teardown. A rule that matched no socket fails the test at teardown
    (:class:`~pytest_netthreads.faults.UnmatchedRuleError`), unless added with
    ``required=False``; when the test failed already, it is shown in its report instead.
    """
    _register(request.config)
    node = request.node
    faults = SocketFaults().install()
    node.stash[_SOCKET_FAULTS] = faults
    yield faults
    faults.undo()
    del node.stash[_SOCKET_FAULTS]
    if not node.stash.get(_CALL_FAILED, False) and not interrupted():
        message = faults.format_unmatched()
        if message:
            raise pytest.fail.Exception(message, pytrace=False)
