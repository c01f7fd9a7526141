"""Hypothesis strategies for faults (``pip install pytest-netthreads[hypothesis]``).

Importing this module imports :mod:`hypothesis`; nothing else in the package does.

- :func:`chunkings` cuts a byte stream into pieces; it shrinks towards fewer cuts made
  earlier, so a failure is reported with the smallest split that shows it.
- :func:`recv_chunks` is the same as an in-process :class:`~.RecvChunks` fault.
- :func:`proxy_faults` and :func:`fault_plans` draw proxy faults with small parameters.
- :func:`message_triggers` draws ``Message`` triggers on a framing, and
  :func:`triggered_faults` proxy faults that wait for one.
"""

from __future__ import annotations

import dataclasses
import itertools

from hypothesis import strategies as st

from .framing import Framing
from .specs import (
    Corrupt,
    Latency,
    LimitData,
    Message,
    ProxyFault,
    RecvChunks,
    ResetPeer,
    Slice,
    SlowClose,
    Timeout,
)

_DIRECTIONS = st.sampled_from(["downstream", "upstream", "both"])


def _sizes(total: int, cuts: set[int]) -> list[int]:
    points = [0, *sorted(cuts), total]
    return [b - a for a, b in itertools.pairwise(points)]


def chunkings(length: int, *, max_cuts: int | None = None) -> st.SearchStrategy[list[int]]:
    """Lists of piece sizes (each >= 1) that add up to ``length``.

    Drawn as a set of cut points, so Hypothesis shrinks a failing chunking towards the
    fewest cuts at the smallest offsets (``[length]`` is no cut at all).

    Args:
        length: the length of the byte stream (``len(data)``), at least 1.
        max_cuts: the most cuts (default: ``length - 1``, every possible one).
    """
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise ValueError(f"length must be an int >= 1, got {length!r}")
    if length == 1:
        return st.just([1])
    cuts = st.sets(st.integers(min_value=1, max_value=length - 1), max_size=max_cuts)
    return cuts.map(lambda points: _sizes(length, points))


def recv_chunks(length: int, *, max_cuts: int | None = None) -> st.SearchStrategy[RecvChunks]:
    """:class:`RecvChunks` faults that cut a ``length``-byte stream (see :func:`chunkings`)."""
    return chunkings(length, max_cuts=max_cuts).map(RecvChunks)


def proxy_faults(*, max_bytes: int = 1024, max_seconds: float = 0.05) -> st.SearchStrategy[
    ProxyFault
]:
    """Single proxy faults with small sizes and short delays (safe to run many of).

    Args:
        max_bytes: the largest byte count (``after_bytes``, ``nbytes``, slice size).
        max_seconds: the longest delay a fault adds.
    """
    seconds = st.floats(min_value=0.0, max_value=max_seconds, allow_nan=False)
    nbytes = st.integers(min_value=0, max_value=max_bytes)
    return st.one_of(
        st.builds(Slice, size=st.integers(1, max(1, max_bytes)), delay=seconds,
                  direction=_DIRECTIONS),
        st.builds(Latency, seconds=seconds, direction=_DIRECTIONS),
        st.builds(ResetPeer, after_bytes=nbytes, direction=_DIRECTIONS),
        st.builds(LimitData, nbytes=nbytes, direction=_DIRECTIONS),
        st.builds(Timeout, after_bytes=nbytes, direction=_DIRECTIONS),
        st.builds(SlowClose, seconds=seconds, direction=_DIRECTIONS),
        st.builds(
            Corrupt,
            offsets=st.lists(nbytes, min_size=1, max_size=3).map(lambda o: tuple(sorted(set(o)))),
            direction=_DIRECTIONS,
        ),
    )


def fault_plans(
    *, max_faults: int = 3, max_bytes: int = 1024, max_seconds: float = 0.05
) -> st.SearchStrategy[tuple[ProxyFault, ...]]:
    """Tuples of up to ``max_faults`` proxy faults; they shrink towards no fault at all."""
    return st.lists(
        proxy_faults(max_bytes=max_bytes, max_seconds=max_seconds), max_size=max_faults
    ).map(tuple)


def message_triggers(framing: Framing, *, max_nth: int = 5) -> st.SearchStrategy[Message]:
    """``Message`` triggers on ``framing``: on the nth message (1 to ``max_nth``, per
    connection), acting from its start or its end. They shrink towards the first message."""
    if isinstance(max_nth, bool) or not isinstance(max_nth, int) or max_nth < 1:
        raise ValueError(f"max_nth must be an int >= 1, got {max_nth!r}")
    return st.builds(
        Message,
        framing=st.just(framing),
        nth=st.integers(min_value=1, max_value=max_nth),
        at=st.sampled_from(["start", "end"]),
    )


def triggered_faults(
    framing: Framing, *, max_nth: int = 5, max_bytes: int = 1024, max_seconds: float = 0.05
) -> st.SearchStrategy[ProxyFault]:
    """Single proxy faults (see :func:`proxy_faults`) that wait for a message trigger (see
    :func:`message_triggers`): the fault, then the message it acts on, shrink together."""
    return st.tuples(
        proxy_faults(max_bytes=max_bytes, max_seconds=max_seconds),
        message_triggers(framing, max_nth=max_nth),
    ).map(lambda pair: dataclasses.replace(pair[0], on=pair[1]))


__all__ = [
    "chunkings",
    "fault_plans",
    "message_triggers",
    "proxy_faults",
    "recv_chunks",
    "triggered_faults",
]
