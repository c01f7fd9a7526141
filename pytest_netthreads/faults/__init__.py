"""Socket fault injection (``from pytest_netthreads import faults``).

- Fault specs: frozen dataclasses validated when made (:mod:`.specs`; every name in its
  ``__all__`` is also here).
- :class:`FaultProxy`: a TCP proxy in front of any server that applies proxy faults.
- :class:`Network`: named nodes behind fault proxies, for partitions between them.
- :class:`SocketFaults`: in-process faults on the sockets the code under test connects.
- Message-aware faults: framings (:mod:`.framing`), the ``on=faults.Message(...)`` trigger
  and :meth:`FaultProxy.hold` (:mod:`.hold`).
- :mod:`pytest_netthreads.faults.strategies`: Hypothesis strategies (imports hypothesis).
"""

from __future__ import annotations

from . import specs
from .framing import HTTP, RESP, Framing, FramingError, LengthPrefixed, Lines, TLSRecords
from .hold import HeldMessage, MessageHold
from .insocket import (
    FaultedSocket,
    SocketFaultEvent,
    SocketFaultRule,
    SocketFaults,
    UnmatchedRuleError,
)
from .network import Cut, Network, PartitionMode
from .proxy import (
    FaultEvent,
    FaultProxy,
    ProxyConnection,
    ProxyError,
    ProxyFaultHandle,
    ProxyHowClosed,
)
from .specs import *  # noqa: F403 (the specs, listed once: specs.__all__)

__all__ = [
    "Cut",
    "FaultEvent",
    "FaultProxy",
    "FaultedSocket",
    "Framing",
    "FramingError",
    "HTTP",
    "HeldMessage",
    "LengthPrefixed",
    "Lines",
    "MessageHold",
    "Network",
    "PartitionMode",
    "RESP",
    "ProxyConnection",
    "ProxyError",
    "ProxyFaultHandle",
    "ProxyHowClosed",
    "SocketFaultEvent",
    "SocketFaultRule",
    "SocketFaults",
    "TLSRecords",
    "UnmatchedRuleError",
    *specs.__all__,
]
