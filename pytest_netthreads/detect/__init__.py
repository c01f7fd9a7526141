"""Detectors: the thread-leak and socket-leak checker, the hang watchdog, tracked locks,
the wait-for graph and the lock-order graph.

Each lives in its own module (``threadleak``, ``socketleak``, ``deadlock``, ``locks``,
``lockorder``), usable without pytest; the plugin wires them up.
"""

from __future__ import annotations
