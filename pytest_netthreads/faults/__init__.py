"""Socket fault injection (``from pytest_netthreads import faults``).

- Fault specs: frozen dataclasses validated when made (:mod:`.specs`).
- :class:`FaultProxy`: a TCP proxy in front of any server that applies proxy faults.
- :class:`SocketFaults`: in-process faults on the sockets the code under test connects.
- :mod:`pytest_netthreads.faults.strategies`: Hypothesis strategies (imports hypothesis).
"""

from __future__ import annotations

from .insocket import FaultedSocket, SocketFaultEvent, SocketFaults
from .proxy import FaultEvent, FaultProxy, ProxyConnection, ProxyError
from .specs import (
    Bandwidth,
    Corrupt,
    DelayConnect,
    Direction,
    HoldConnect,
    Latency,
    LimitData,
    ProxyFault,
    RecvChunks,
    RecvError,
    ResetPeer,
    SendError,
    ShortSends,
    Slice,
    SlowClose,
    SocketFault,
    Stall,
    Timeout,
)

__all__ = [
    "Bandwidth",
    "Corrupt",
    "DelayConnect",
    "Direction",
    "FaultEvent",
    "FaultProxy",
    "FaultedSocket",
    "HoldConnect",
    "Latency",
    "LimitData",
    "ProxyConnection",
    "ProxyError",
    "ProxyFault",
    "RecvChunks",
    "RecvError",
    "ResetPeer",
    "SendError",
    "ShortSends",
    "Slice",
    "SlowClose",
    "SocketFault",
    "SocketFaultEvent",
    "SocketFaults",
    "Stall",
    "Timeout",
]
