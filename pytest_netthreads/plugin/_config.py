"""Option and ini values: one resolver, and errors that say where a bad value came from.

Every setting of the plugin is a command-line option mirrored by an ini key of the same name
(``--thread-leak-grace`` / ``thread_leak_grace``); the option wins when both are given.
"""

from __future__ import annotations

import math
import os
import threading

import pytest

from .._runtime import values


def setting(config: pytest.Config, name: str) -> tuple[object, str]:
    """The value of ``--name`` if given, else of the ini key ``name``, and where it came from
    (``"--thread-leak-grace"`` or ``"ini thread_leak_grace (pyproject.toml)"``)."""
    value = config.getoption(name)
    if value is not None:
        return value, "--" + name.replace("_", "-")
    where = f"ini {name}"
    if config.inipath is not None:
        where += f" ({config.inipath.name})"
    return config.getini(name), where


def flag(config: pytest.Config, name: str) -> bool:
    """A switch: ``--name`` or the ini key (a bool)."""
    return bool(setting(config, name)[0])


def _unset(value: object, where: str) -> bool:
    # A blank ini value means "not set"; an empty option (--x=) is a mistake, said as such.
    return value is None or (
        not where.startswith("--") and isinstance(value, str) and not value.strip()
    )


def seconds(config: pytest.Config, name: str) -> float | None:
    """A number of seconds, from 0 to :data:`threading.TIMEOUT_MAX`; ``None`` when unset.

    Raises:
        pytest.UsageError: naming the option or ini key and the value as given.
    """
    raw, where = setting(config, name)
    if _unset(raw, where):
        return None
    try:
        number = float(str(raw).strip())
    except ValueError:
        number = math.nan
    try:
        return values.seconds(number, where, maximum=threading.TIMEOUT_MAX)
    except (TypeError, ValueError):
        raise pytest.UsageError(
            f"{where} must be a finite number of seconds >= 0 and <= "
            f"{threading.TIMEOUT_MAX:g}, got {raw!r}"
        ) from None


def integer(config: pytest.Config, name: str) -> int | None:
    """An int; ``None`` when unset.

    Raises:
        pytest.UsageError: naming the option or ini key and the value as given.
    """
    raw, where = setting(config, name)
    if _unset(raw, where):
        return None
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    try:
        return int(str(raw).strip())
    except ValueError:
        raise pytest.UsageError(f"{where} must be an int, got {raw!r}") from None


LEVELS = ("warn", "fail")
"""What a detector's finding does: ``fail`` its test (the default), or only ``warn``."""


def level(config: pytest.Config, name: str) -> str:
    """A detector's level, ``"warn"`` or ``"fail"`` (the default when unset).

    Raises:
        pytest.UsageError: naming the option or ini key, the allowed values and the value.
    """
    raw, where = setting(config, name)
    if _unset(raw, where):
        return "fail"
    value = str(raw).strip().lower()
    if value not in LEVELS:
        raise pytest.UsageError(
            f"{where} must be one of {', '.join(LEVELS)}, got {raw!r}"
        )
    return value


def path(config: pytest.Config, name: str) -> str | None:
    """A file name, relative to the rootdir when given in the ini file (as pytest's own
    ``cache_dir`` is), to the current directory on the command line; ``None`` when unset."""
    raw, where = setting(config, name)
    if _unset(raw, where):
        return None
    text = str(raw).strip()
    if not text:
        raise pytest.UsageError(f"{where} must be a file name, got {raw!r}")
    if where.startswith("--"):
        return os.path.abspath(text)
    return os.path.join(str(config.rootpath), text)
