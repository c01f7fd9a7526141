"""Fault specs: frozen, hashable, validated when made (the error names the parameter)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from pytest_netthreads import faults


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: faults.Latency(-1), ValueError, r"seconds must be a finite number >= 0"),
        (lambda: faults.Latency(0.1, jitter=float("inf")), ValueError, "jitter"),
        (lambda: faults.Latency("1"), TypeError, "seconds must be a finite number"),  # type: ignore[arg-type]
        (lambda: faults.Latency(0.1, direction="sideways"), ValueError, "direction must be one"),  # type: ignore[arg-type]
        (lambda: faults.Latency(0.1, probability=1.5), ValueError, r"probability .* <= 1"),
        (lambda: faults.Bandwidth(0), ValueError, r"bytes_per_second must be a finite number >= 1"),
        # A rate this low scheduled a timer ~1e7 s out, which killed the shared event loop.
        (lambda: faults.Bandwidth(1e-7), ValueError, r"bytes_per_second .* >= 1 and <= 1e\+12"),
        (lambda: faults.Bandwidth(float("inf")), ValueError, "bytes_per_second"),
        (lambda: faults.Bandwidth(10**400), ValueError, "bytes_per_second"),
        (lambda: faults.Bandwidth(float("nan")), ValueError, "bytes_per_second"),
        (lambda: faults.Latency(float("nan")), ValueError, "seconds must be a finite number"),
        (lambda: faults.Latency(3601), ValueError, r"seconds must be .* <= 3600"),
        (lambda: faults.Latency(0.1, jitter=float("nan")), ValueError, "jitter"),
        (lambda: faults.Latency(0.1, probability=float("nan")), ValueError, "probability"),
        (lambda: faults.Latency(0.1, probability=-0.1), ValueError, "probability"),
        (lambda: faults.Slice(4, delay=float("nan")), ValueError, "delay"),
        (lambda: faults.Corrupt(rate=float("nan")), ValueError, "rate must be"),
        (lambda: faults.DelayConnect(float("inf")), ValueError, "seconds"),
        (lambda: faults.Slice(0), ValueError, r"size must be an int >= 1"),
        (lambda: faults.Slice(2, variation=2), ValueError, "variation must be smaller than size"),
        (lambda: faults.Slice(2.5), TypeError, "size must be an int"),  # type: ignore[arg-type]
        (lambda: faults.Timeout(after_bytes=-1), ValueError, "after_bytes must be an int >= 0"),
        (lambda: faults.Stall(after_bytes=True), TypeError, "after_bytes must be an int"),
        (lambda: faults.ResetPeer(after_bytes=-5), ValueError, "after_bytes"),
        (lambda: faults.LimitData(-1), ValueError, "nbytes must be an int >= 0"),
        (lambda: faults.SlowClose(float("nan")), ValueError, "seconds must be a finite number"),
        (lambda: faults.Corrupt(), ValueError, r"Corrupt needs offsets=\(...\) or a rate > 0"),
        (lambda: faults.Corrupt(offsets=[1]), TypeError, "offsets must be a tuple"),  # type: ignore[arg-type]
        (lambda: faults.Corrupt(offsets=(1,), mask=256), ValueError, "mask must be an int from 1"),
        (lambda: faults.Corrupt(rate=2.0), ValueError, "rate must be"),
        (lambda: faults.DelayConnect(-0.1), ValueError, "seconds"),
    ],
)
def test_bad_values_name_the_parameter(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


def test_faults_are_frozen_and_compare_by_value() -> None:
    fault = faults.Slice(3, variation=1, delay=0.01, direction="both")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fault.size = 4  # type: ignore[misc]
    assert fault == faults.Slice(3, variation=1, delay=0.01, direction="both")
    assert len({fault, faults.Slice(3, variation=1, delay=0.01, direction="both")}) == 1
    assert faults.ResetPeer().applies_to("downstream")
    assert not faults.ResetPeer().applies_to("upstream")
    assert faults.Stall(direction="both").applies_to("downstream")
    assert faults.RecvChunks([1, 2]).sizes == (1, 2)


def test_positional_fields_keep_their_order_and_the_shared_ones_are_keyword_only() -> None:
    assert faults.Latency(0.05, 0.01) == faults.Latency(seconds=0.05, jitter=0.01)
    assert faults.Slice(3, 1, 0.01) == faults.Slice(size=3, variation=1, delay=0.01)
    assert faults.Corrupt((1,), 0.5, 0x0F) == faults.Corrupt(offsets=(1,), rate=0.5, mask=0x0F)
    assert faults.Timeout(3).after_bytes == faults.ResetPeer(3).after_bytes == 3
    with pytest.raises(TypeError):
        faults.Latency(0.05, 0.0, "both")  # type: ignore[misc]
    # Each kind keeps its own default direction.
    assert faults.Latency(0.05).direction == "downstream"
    assert faults.Stall().direction == "upstream"
    assert faults.HoldConnect().direction == faults.DelayConnect(1).direction == "both"


def test_the_repr_in_fault_logs_is_unchanged() -> None:
    # Fault logs and failure reports show faults by their repr; direction and probability
    # (fields of the base class now) still come last.
    assert repr(faults.Slice(3, 1, 0.01, direction="both")) == (
        "Slice(size=3, variation=1, delay=0.01, direction='both', probability=1.0)"
    )
    assert repr(faults.ResetPeer(after_bytes=4)) == (
        "ResetPeer(after_bytes=4, direction='downstream', probability=1.0)"
    )
    assert repr(faults.HoldConnect()) == "HoldConnect(direction='both', probability=1.0)"


def test_connection_faults_share_a_base_and_accept_a_direction() -> None:
    for fault in (faults.HoldConnect(), faults.DelayConnect(0.1, direction="upstream")):
        assert isinstance(fault, faults.ConnectFault)
    assert not isinstance(faults.Latency(0.1), faults.ConnectFault)
    with pytest.raises(ValueError, match="direction must be one"):
        faults.HoldConnect(direction="sideways")  # type: ignore[arg-type]
