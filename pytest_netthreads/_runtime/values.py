"""Checks of the values users pass in: one wording, one error type per mistake.

A wrong type (a string, a bool where a number is wanted) raises ``TypeError``; a value of the
right type that is out of range (NaN, an infinity, a negative number, a port above 65535)
raises ``ValueError``. Each message names the parameter and what was expected.
"""

from __future__ import annotations

import math
import os
import socket
import threading

MAX_TIMEOUT = threading.TIMEOUT_MAX
"""The longest timeout the standard library's waits take (``Lock.acquire``, ``Thread.join``):
about 292 years; longer ones raise ``OverflowError``."""

UNIX_PATH_MAX = 107
"""The longest path a Unix domain socket can be bound to, in bytes (``sun_path`` holds 108
on Linux, with the terminating NUL)."""


def number(
    value: object,
    what: str,
    *,
    minimum: float = 0.0,
    maximum: float | None = None,
    above_minimum: bool = False,
    unit: str = "",
) -> float:
    """``value`` as a finite float from ``minimum`` (excluded with ``above_minimum``) to
    ``maximum``. ``TypeError`` for anything but an int or a float (a bool too), ``ValueError``
    for NaN, an infinity or a value out of range; the message names ``what``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(_expected(what, value, minimum, maximum, above_minimum, unit))
    try:
        result = float(value)
    except OverflowError:  # an int too big for a float
        raise ValueError(_expected(what, value, minimum, maximum, above_minimum, unit)) from None
    if (
        not math.isfinite(result)
        or result < minimum
        or (above_minimum and result == minimum)
        or (maximum is not None and result > maximum)
    ):
        raise ValueError(_expected(what, value, minimum, maximum, above_minimum, unit))
    return result


def _expected(
    what: str,
    value: object,
    minimum: float,
    maximum: float | None,
    above_minimum: bool,
    unit: str,
) -> str:
    low = f"> {minimum:g}" if above_minimum else f">= {minimum:g}"
    high = "" if maximum is None else f" and <= {maximum:g}"
    return f"{what} must be a finite number{unit} {low}{high}, got {value!r}"


def seconds(
    value: object, what: str, *, positive: bool = False, maximum: float = MAX_TIMEOUT
) -> float:
    """``value`` as a finite number of seconds, ``>= 0`` (``> 0`` with ``positive``), at most
    ``maximum`` (by default :data:`MAX_TIMEOUT`: a longer wait raises ``OverflowError`` deep
    inside a lock or a poll, long after the value was given)."""
    # The fast path (servers, deadlines: per test): a float in range is the value itself.
    # NaN fails both comparisons and gets the full check, as does anything not a float.
    if type(value) is float and (value > 0.0 if positive else value >= 0.0) and value <= maximum:
        return value
    return number(value, what, maximum=maximum, above_minimum=positive, unit=" of seconds")


def port(value: object, what: str, *, allow_zero: bool = True) -> int:
    """``value`` as a TCP port number: 0 to 65535 (1 to 65535 without ``allow_zero``)."""
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int from {low} to 65535, got {value!r}")
    if not low <= value <= 65535:
        raise ValueError(f"{what} must be from {low} to 65535, got {value}")
    return value


def unix_path(value: object, what: str) -> str:
    """``value`` as a path a Unix domain socket can be bound to (not empty, not too long)."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str or os.PathLike path, got {value!r}")
    if not value:
        raise ValueError(
            f"{what} must not be empty (an empty path binds an unnamed abstract socket that "
            "no client can connect to)"
        )
    if "\0" in value.lstrip("\0"):
        raise ValueError(f"{what} must not contain a NUL byte, got {value!r}")
    length = len(os.fsencode(value))
    if length > UNIX_PATH_MAX:
        raise ValueError(
            f"{what} is {length} bytes long; a Unix socket path can be at most "
            f"{UNIX_PATH_MAX} bytes (sun_path): {value!r}"
        )
    return value


def wait_arguments(count: object, timeout: object) -> tuple[int, float]:
    """The arguments of ``wait_for_connections(count, timeout=...)``, checked."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise TypeError(f"count must be an int >= 0, got {count!r}")
    if count < 0:
        raise ValueError(f"count must be an int >= 0, got {count}")
    return count, seconds(timeout, "timeout")


def format_address(address: object, *, unnamed: str = "(unnamed unix socket)") -> str:
    """``host:port`` (``[host]:port`` for IPv6); a Unix path as it is, ``unnamed`` for ``""``.

    An abstract Unix socket name (``bytes``) is shown as its ``repr``.
    """
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        return f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
    if isinstance(address, bytes):
        return repr(address)
    return str(address) or unnamed


def resolve_host(host: object, port: int, what: str = "host") -> tuple[socket.AddressFamily, str]:
    """The address family and IP address to bind ``host`` to (``localhost`` is 127.0.0.1)."""
    if not isinstance(host, str):
        raise TypeError(f"{what} must be a str (an IP address or 'localhost'), got {host!r}")
    if host == "localhost":
        return socket.AF_INET, "127.0.0.1"
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family, host
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ValueError(
            f"{what}={host!r} is not an IP address or a name this machine resolves ({exc})"
        ) from None
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])
