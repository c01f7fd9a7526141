"""Network: named nodes behind fault proxies, for partitions between them.

The model: a node is a server (any target a :class:`~.proxy.FaultProxy` accepts) or a
client-only node (``None``: the test, a client library). Every ordered pair of nodes whose
second is a server gets its own proxy, the *link* ``src -> dst``: node ``src`` reaches
``dst`` at :meth:`Network.address` ``(src, dst)`` and nowhere else. Because each link has
its own listener, the proxy knows who is talking without the client naming itself, so a
partition can cut ``a -> b`` and leave ``c -> b`` alone.

On a link, ``upstream`` is what ``src`` sends to ``dst`` and ``downstream`` what ``dst``
answers. Cutting the bytes from ``x`` to ``y`` acts on two links: upstream on ``x -> y``
(``x``'s requests) and downstream on ``y -> x`` (``x``'s answers to ``y``'s requests).

How a cut acts (``mode``):

- ``"stall"`` (the default): the link stops reading the blocked direction, so the bytes
  stay in the sender's socket buffers and then its ``send`` blocks, as with a real network
  that drops packets and TCP retransmitting them. Nothing is lost: :meth:`Network.heal`
  lets the held bytes through in order, as TCP delivers them once a real partition heals.
  New connections across the cut are accepted by the link's listener (so ``connect()``
  returns) but held: nothing is forwarded until the heal (a read times out). Unlike a
  dropped SYN, ``connect()`` itself does not time out.
- ``"reset"``: the links crossing the cut reset (RST) their open connections and refuse
  new ones (``ECONNREFUSED``: the listener is closed) until the heal, like a firewall that
  rejects. A TCP connection needs both directions, so a one-way reset cut resets the
  connections of both links of the pair.

Everything here is usable without pytest: ``with Network({...}) as net:``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from .proxy import FaultProxy, ProxyError, ProxyFaultHandle
from .specs import HoldConnect, Stall

if TYPE_CHECKING:
    from typing_extensions import Self

PartitionMode = Literal["stall", "reset"]
"""How a cut acts on the connections that cross it (see :class:`Network`)."""

_MODES = ("stall", "reset")
# A link's network faults: "hold" goes first and leaves last, so no connection is dialed
# between a heal's steps with a direction still stalled.
_ADD_ORDER = ("hold", "upstream", "downstream")


@dataclass(frozen=True, eq=False)
class Cut:
    """One :meth:`Network.partition` or :meth:`Network.one_way`: the directed node pairs
    whose bytes it blocks. A context manager: the block's end heals this cut only."""

    blocked: frozenset[tuple[str, str]]
    """``(x, y)``: the bytes ``x`` sends to ``y`` are blocked."""
    mode: PartitionMode
    description: str
    network: Network

    def heal(self) -> None:
        """Remove this cut (idempotent); the other cuts stay."""
        self.network._heal_cuts([self])

    def __enter__(self) -> Cut:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.heal()

    def __repr__(self) -> str:
        return f"<Cut {self.description} ({self.mode})>"


class _Link:
    """The proxy of one ordered pair, and the network faults it has now."""

    __slots__ = ("handles", "proxy", "refusing")

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.handles: dict[str, ProxyFaultHandle] = {}  # "upstream", "downstream", "hold"
        self.refusing = False


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a node name (a non-empty str), got {value!r}")
    if not value:
        raise ValueError(f"{what} must be a non-empty str, got {value!r}")
    return value


def _check_mode(mode: object) -> PartitionMode:
    if not isinstance(mode, str):
        raise TypeError(f"mode must be one of {_MODES}, got {mode!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    return mode  # type: ignore[return-value]


class Network:
    """Named nodes, each link between two of them its own :class:`FaultProxy`; partitions.

    ``with Network({"primary": primary, "replica": replica, "client": None}) as net:``
    starts a proxy for every ordered pair whose second node is a server; node ``a`` reaches
    ``b`` at ``net.address("a", "b")``. :meth:`partition` and :meth:`one_way` cut links
    (the open connections too), :meth:`heal` mends them. See the module docstring (and
    "Partitions between nodes" in ``docs/faults.rst``) for what a cut does to the bytes.

    Args:
        nodes: node name to target: ``(host, port)``, a Unix socket path, any object with
            ``.address``, or ``None`` for a node that only connects (a client).
        seed: seeds every link's proxy (each gets its own seed drawn from this one and the
            pair's names); ``None`` picks one at random, shown as :attr:`seed`.
        host: where the links listen (loopback by default).
    """

    def __init__(
        self, nodes: Mapping[str, Any], *, seed: int | None = None, host: str = "127.0.0.1"
    ) -> None:
        if not isinstance(nodes, Mapping):
            raise TypeError(
                f"nodes must be a mapping of node name to target (or None), got {nodes!r}"
            )
        if len(nodes) < 2:
            raise ValueError(f"nodes must name at least 2 nodes, got {list(nodes)!r}")
        for name in nodes:
            _check_name(name, "nodes' keys")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise TypeError(f"seed must be an int or None, got {seed!r}")
        if not isinstance(host, str):
            raise TypeError(f"host must be a str (an IP address or 'localhost'), got {host!r}")
        self.seed: int = random.SystemRandom().randrange(2**32) if seed is None else seed
        self._nodes = dict(nodes)
        self._host = host
        self._lock = threading.RLock()
        self._links: dict[tuple[str, str], _Link] = {}
        self._cuts: list[Cut] = []
        self._state = "new"
        # Checked here, not at start(): a bad target fails at the call site.
        self._proxies = {
            (src, dst): FaultProxy(
                target,
                seed=random.Random(f"{self.seed}:{src}->{dst}").randrange(2**32),
                host=host,
                name=f"{src}->{dst}",
            )
            for src, dst, target in self._pairs()
        }

    def _pairs(self) -> Iterator[tuple[str, str, Any]]:
        for dst, target in self._nodes.items():
            if target is None:
                continue
            for src in self._nodes:
                if src != dst:
                    yield src, dst, target

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> Self:
        """Start every link's proxy. Returns ``self``."""
        with self._lock:
            if self._state != "new":
                raise RuntimeError("network was already started; create a new one")
            self._state = "started"
            try:
                for pair, proxy in self._proxies.items():
                    proxy.start()
                    self._links[pair] = _Link(proxy)
            except BaseException:
                self.stop()
                raise
        return self

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every link (closing its connections); raise the first :class:`ProxyError`."""
        with self._lock:
            self._state = "stopped"
            links, self._links = self._links, {}
            self._cuts.clear()
        errors: list[ProxyError] = []
        for link in links.values():
            try:
                link.proxy.stop()
            except ProxyError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    def check(self) -> None:
        """Raise :class:`ProxyError` for errors in any link's callbacks not raised before."""
        for proxy in self.proxies:
            proxy.check()

    # -- where nodes are ---------------------------------------------------------------

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(self._nodes)

    @property
    def proxies(self) -> list[FaultProxy]:
        """Every link's proxy (started or not), in the order of :meth:`links`."""
        return list(self._proxies.values())

    def links(self) -> list[tuple[str, str]]:
        """Every ``(src, dst)`` pair that has a link."""
        return list(self._proxies)

    def proxy(self, src: str, dst: str) -> FaultProxy:
        """The proxy of the link ``src -> dst`` (to add faults to that link alone)."""
        self._node(src, "src")
        target = self._nodes[self._node(dst, "dst")]
        if src == dst:
            raise ValueError(f"src and dst must be different nodes, got {src!r} twice")
        if target is None:
            raise ValueError(
                f"dst: node {dst!r} is a client-only node (its target is None); nothing "
                f"connects to it"
            )
        return self._proxies[(src, dst)]

    def address(self, src: str, dst: str) -> tuple[str, int]:
        """Where node ``src`` connects to reach node ``dst`` (``(host, port)``)."""
        proxy = self.proxy(src, dst)
        if self._state != "started":
            raise RuntimeError(f"network has no addresses until start() ({self._state})")
        return proxy.address

    def _node(self, name: object, what: str) -> str:
        name = _check_name(name, what)
        if name not in self._nodes:
            raise ValueError(f"{what}: no node named {name!r}; the nodes are {self.nodes!r}")
        return name

    # -- cuts --------------------------------------------------------------------------

    def partition(self, *groups: str | Iterable[str], mode: PartitionMode = "stall") -> Cut:
        """Cut every link between nodes of different groups, both ways.

        ``net.partition({"a"}, {"b", "c"})``: ``a`` and ``b``, ``a`` and ``c`` no longer
        reach each other; ``b`` and ``c`` still do. A node named in no group keeps all its
        links (a test's client node, say). A str is a group of one node. Cuts add up
        until :meth:`heal` (or the returned :class:`Cut`'s ``heal()``).

        Args:
            groups: two or more disjoint, non-empty groups of node names.
            mode: ``"stall"`` or ``"reset"`` (see :class:`Network`).
        """
        mode = _check_mode(mode)
        if len(groups) < 2:
            raise ValueError(f"groups: partition() needs at least 2 groups, got {len(groups)}")
        sets: list[frozenset[str]] = []
        seen: dict[str, int] = {}
        for i, group in enumerate(groups):
            if isinstance(group, str):
                names = [group]
            elif isinstance(group, Iterable) and not isinstance(group, (bytes, Mapping)):
                names = list(group)
            else:
                raise TypeError(
                    f"groups must be sets of node names (or one name as a str), got {group!r}"
                )
            if not names:
                raise ValueError(f"groups: group {i} is empty")
            for name in names:
                self._node(name, f"groups (group {i})")
                if name in seen and seen[name] != i:
                    raise ValueError(
                        f"groups must be disjoint: {name!r} is in group {seen[name]} and {i}"
                    )
                seen[name] = i
            sets.append(frozenset(names))
        blocked = frozenset(
            (x, y)
            for i, one in enumerate(sets)
            for j, other in enumerate(sets)
            if i != j
            for x in one
            for y in other
        )
        text = " | ".join("{" + ", ".join(sorted(s)) + "}" for s in sets)
        return self._cut(Cut(blocked, mode, text, self))

    def one_way(self, src: str, dst: str, *, mode: PartitionMode = "stall") -> Cut:
        """Block the bytes ``src`` sends to ``dst``; those ``dst`` sends to ``src`` go on.

        In ``"stall"`` mode ``src``'s requests on its connections to ``dst`` are held and
        so are ``src``'s answers on ``dst``'s connections to it; ``dst``'s requests and
        answers still arrive. New connections between the two are held either way (a TCP
        handshake needs both directions). In ``"reset"`` mode both links reset and refuse.
        """
        mode = _check_mode(mode)
        self._node(src, "src")
        self._node(dst, "dst")
        if src == dst:
            raise ValueError(f"src and dst must be different nodes, got {src!r} twice")
        return self._cut(Cut(frozenset({(src, dst)}), mode, f"{src} -/-> {dst}", self))

    def heal(self) -> None:
        """Remove every cut: held bytes go through, links listen and dial again."""
        with self._lock:
            self._heal_cuts(list(self._cuts))

    @property
    def cuts(self) -> list[Cut]:
        """The cuts in force, oldest first."""
        with self._lock:
            return list(self._cuts)

    def blocked(self, src: str, dst: str) -> bool:
        """Whether the bytes ``src`` sends to ``dst`` are blocked now."""
        self._node(src, "src")
        self._node(dst, "dst")
        with self._lock:
            return any((src, dst) in cut.blocked for cut in self._cuts)

    def _cut(self, cut: Cut) -> Cut:
        with self._lock:
            if self._state != "started":
                raise RuntimeError(f"network is not running ({self._state})")
            self._cuts.append(cut)
            self._apply()
        return cut

    def _heal_cuts(self, cuts: list[Cut]) -> None:
        with self._lock:
            self._cuts = [cut for cut in self._cuts if cut not in cuts]
            if self._state == "started":
                self._apply()

    def _apply(self) -> None:
        """Give every link the faults the cuts in force ask for (lock held).

        A fault a link keeps is not removed and added again (bytes would slip through
        in between); new ones are added before old ones go.
        """
        stalled: set[tuple[str, str]] = set()
        reset: set[frozenset[str]] = set()
        for cut in self._cuts:
            if cut.mode == "reset":
                reset.update(frozenset(pair) for pair in cut.blocked)
            else:
                stalled.update(cut.blocked)
        for (src, dst), link in self._links.items():
            want = set()
            if (src, dst) in stalled:
                want.add("upstream")
            if (dst, src) in stalled:
                want.add("downstream")
            if want:
                want.add("hold")
            proxy = link.proxy
            for key in [k for k in _ADD_ORDER if k in want and k not in link.handles]:
                fault = HoldConnect() if key == "hold" else Stall(0, direction=key)  # type: ignore[arg-type]
                link.handles[key] = proxy.add(fault)
            refuse = frozenset((src, dst)) in reset
            if refuse and not link.refusing:
                proxy.down(reset_connections=True)
                link.refusing = True
            for key in [k for k in reversed(_ADD_ORDER) if k in link.handles and k not in want]:
                link.handles.pop(key).remove()
            if link.refusing and not refuse:
                proxy.up()
                link.refusing = False

    def format_log(self, limit: int = 20) -> str:
        """The cuts in force and each link's fault log (for failure reports)."""
        lines = [f"network seed={self.seed}; cuts: {self.cuts or 'none'}"]
        for proxy in self.proxies:
            if proxy.log:
                lines.append(proxy.format_log(limit))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"<Network {list(self._nodes)} seed={self.seed} {self._state}>"


__all__ = ["Cut", "Network", "PartitionMode"]
