"""Socket fault injection (``from pytest_netthreads import faults``).

- Fault specs: frozen dataclasses validated when made (:mod:`.specs`; every name in its
  ``__all__`` is also here).
- :class:`FaultProxy`: a TCP proxy in front of any server that applies proxy faults.
- :class:`SocketFaults`: in-process faults on the sockets the code under test connects.
- :mod:`pytest_netthreads.faults.strategies`: Hypothesis strategies (imports hypothesis).
"""

from __future__ import annotations

from . import specs
from .insocket import (
    FaultedSocket,
    SocketFaultEvent,
    SocketFaultRule,
    SocketFaults,
    UnmatchedRuleError,
)
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
    "FaultEvent",
    "FaultProxy",
    "FaultedSocket",
    "ProxyConnection",
    "ProxyError",
    "ProxyFaultHandle",
    "ProxyHowClosed",
    "SocketFaultEvent",
    "SocketFaultRule",
    "SocketFaults",
    "UnmatchedRuleError",
    *specs.__all__,
]
