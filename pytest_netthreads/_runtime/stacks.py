"""Stacks for reports: capture them cheaply, format them like a traceback, name the caller.

One place decides which frames a report shows, so that leak reports, deadlock reports and
lock-order edges hide the same frames for the same reasons:

* frames of the **test runner** (the installed ``pytest``, ``_pytest`` and ``pluggy``
  packages, and ``<frozen runpy>`` under ``python -m``) say nothing about the code under
  test: :func:`capture` stops at the first one, :func:`format_frames` can leave them out;
* **library** frames (the standard library, installed packages, this kit) are never "where"
  a thread was started or a socket created: :func:`where` names the innermost frame of the
  caller's own code.

Frames are kept as plain ``(filename, lineno, function)`` tuples: capturing reads no source
line (a thread start must stay cheap); source lines are read when a report is formatted.
"""

from __future__ import annotations

import importlib.util
import linecache
import os
import sys
import sysconfig
import threading
import traceback
from collections.abc import Iterable, Sequence
from types import FrameType

__all__ = [
    "MAX_FRAMES",
    "NO_FRAMES",
    "RUNNER_PACKAGES",
    "Frame",
    "capture",
    "format_frames",
    "format_thread_stack",
    "is_library_file",
    "is_runner_file",
    "is_stdlib_file",
    "stack_lines",
    "started_by",
    "walk",
    "where",
    "where_within",
]

Frame = tuple[str, int, str]
"""``(filename, lineno, function)`` of one stack frame, outermost first in a stack."""

MAX_FRAMES = 40
"""How many frames :func:`capture` keeps at most (the innermost ones)."""

RUNNER_PACKAGES = ("_pytest", "pytest", "pluggy")
"""The test runner's packages: their frames say nothing about the code under test."""

_RUNNER_FROZEN = ("<frozen runpy>",)
_runner_dirs: tuple[str, ...] | None = None  # found on first use (see _find_runner_dirs)
_runner_files: dict[str, bool] = {}  # filename -> whether it is the runner's (a cache)

_STDLIB_DIR = os.path.dirname(threading.__file__) + os.sep
# Library code for where(): the stdlib, installed packages and this kit.
_LIBRARY_DIRS = tuple(
    dict.fromkeys(
        os.path.normcase(sysconfig.get_paths()[key]) + os.sep
        for key in ("stdlib", "platstdlib", "purelib", "platlib")
    )
)
_KIT_DIR = os.path.normcase(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))) + os.sep


def _find_runner_dirs() -> tuple[str, ...]:
    """The directories of the installed runner packages (located, not imported)."""
    dirs = []
    for name in RUNNER_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            spec = None
        for location in (spec.submodule_search_locations or ()) if spec is not None else ():
            dirs.append(os.path.join(location, ""))
    return tuple(dirs)


def is_runner_file(filename: str) -> bool:
    """Whether ``filename`` belongs to the test runner (pytest, pluggy, ``<frozen runpy>``).

    Decided by where the runner is installed, not by a directory name: a project of one's
    own in a directory called ``pytest`` is not the runner. Cached per file name.
    """
    runner = _runner_files.get(filename)
    if runner is None:
        global _runner_dirs
        dirs = _runner_dirs
        if dirs is None:
            dirs = _runner_dirs = _find_runner_dirs()
        runner = _runner_files[filename] = filename.startswith(dirs + _RUNNER_FROZEN)
    return runner


def is_stdlib_file(filename: str) -> bool:
    """Whether ``filename`` is a module of the standard library (installed packages are not)."""
    return (
        filename.startswith(_STDLIB_DIR)
        and "site-packages" not in filename
        and "dist-packages" not in filename
    ) or filename.startswith("<frozen ")


def is_library_file(filename: str) -> bool:
    """Whether ``filename`` is library code for :func:`where`: the standard library, an
    installed package (``site-packages``) or this kit."""
    path = os.path.normcase(os.path.abspath(filename))
    return path.startswith(_LIBRARY_DIRS) or path.startswith(_KIT_DIR)


def capture(frame: FrameType | None, limit: int = MAX_FRAMES) -> tuple[Frame, ...]:
    """The frames from ``frame`` outwards, up to the test runner's own frames (outermost first).

    At most ``limit`` frames (the innermost ones). Cheap: no source lines are read here (see
    :func:`format_frames`).
    """
    frames: list[Frame] = []
    runner_files = _runner_files
    while frame is not None and len(frames) < limit:
        code = frame.f_code
        filename = code.co_filename
        runner = runner_files.get(filename)
        if runner is None:
            runner = is_runner_file(filename)
        if runner:
            break
        frames.append((filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    frames.reverse()
    return tuple(frames)


def walk(frame: FrameType | None) -> list[Frame]:
    """Every frame from the outermost one in to ``frame`` (the runner's too).

    For a report made now: the source of modules loaded from elsewhere than a file (a zip)
    is made readable, as :func:`traceback.extract_stack` does.
    """
    frames: list[Frame] = []
    while frame is not None:
        code = frame.f_code
        linecache.lazycache(code.co_filename, frame.f_globals)
        frames.append((code.co_filename, frame.f_lineno, code.co_name))
        frame = frame.f_back
    frames.reverse()
    return frames


def stack_lines(
    frames: Iterable[Frame], *, limit: int | None = None, hide_runner: bool = False
) -> tuple[list[str], int]:
    """``frames`` formatted as a traceback's entries (one string per frame, with its source
    line), and how many runner frames ``hide_runner`` left out.

    ``limit`` keeps the innermost ``limit`` frames (after the runner's were left out).
    """
    entries = list(frames)
    hidden = 0
    if hide_runner:
        kept = [entry for entry in entries if not is_runner_file(entry[0])]
        hidden = len(entries) - len(kept)
        entries = kept
    if limit is not None:
        entries = entries[-limit:]
    for filename in {entry[0] for entry in entries}:
        linecache.checkcache(filename)  # a file changed since it was cached is read again
    summary = traceback.StackSummary.from_list(
        [traceback.FrameSummary(filename, lineno, name) for filename, lineno, name in entries]
    )
    return summary.format(), hidden


NO_FRAMES = "    (no frames recorded)\n"
"""What :func:`format_frames` returns for no frames at all."""


def format_frames(frames: Iterable[Frame], *, hide_runner: bool = False) -> str:
    """Format frames like a traceback (most recent call last).

    With ``hide_runner``, the test runner's frames are left out and counted in a first line
    (``(32 frames of pytest and pluggy not shown)``). :data:`NO_FRAMES` for no frames.
    """
    lines, hidden = stack_lines(frames, hide_runner=hide_runner)
    note = f"    ({hidden} frames of pytest and pluggy not shown)\n" if hidden else ""
    return (note + "".join(lines)) or NO_FRAMES


def format_thread_stack(
    thread: threading.Thread, *, skip_prefix: str | None = None, hide_runner: bool = False
) -> str:
    """The current stack of a live thread, formatted (most recent call last).

    Args:
        thread: the thread.
        skip_prefix: frames at the top of the stack whose file name starts with this are left
            out (a detector's own frames, for instance).
        hide_runner: leave out the test runner's frames, as :func:`format_frames` does.
    """
    frame = sys._current_frames().get(thread.ident) if thread.ident is not None else None
    if frame is None:
        return "    (no stack: the thread is not running)\n"
    if skip_prefix is not None:
        while frame is not None and frame.f_code.co_filename.startswith(skip_prefix):
            frame = frame.f_back
    return format_frames(walk(frame), hide_runner=hide_runner)


def where(frames: Sequence[Frame]) -> str:
    """``file:line in function`` of the innermost frame of the caller's own code.

    That is, outside the stdlib, installed packages (``site-packages``) and this kit: the line
    of the test (or the code under test) that started the thread or created the socket, not
    ``threading.py``, ``concurrent/futures`` or an HTTP library. The full stack is reported
    too; when every frame is library code, the innermost one is named.
    """
    for filename, lineno, name in reversed(frames):
        if not is_library_file(filename):
            return f"{filename}:{lineno} in {name}"
    if frames:
        filename, lineno, name = frames[-1]
        return f"{filename}:{lineno} in {name}"
    return "(unknown)"


def where_within(frames: Sequence[Frame], root: str) -> str | None:
    """``path:line in function`` of the outermost frame of code inside ``root`` (the user's
    rootdir), the path relative to ``root``; ``None`` when no frame is.

    :func:`where` names the innermost frame outside library code, which may be a library of
    the project's own (``somelib/transport.py:763``); this names the frame of the test, the
    fixture or the ``conftest.py`` that led there (``tests/conftest.py:92 in a_fixture``).
    Library code inside ``root`` (a virtualenv in it, this kit) does not count.
    """
    prefix = os.path.join(os.path.normcase(os.path.abspath(root)), "")
    for filename, lineno, name in frames:
        path = os.path.normcase(os.path.abspath(filename))
        if path.startswith(prefix) and not is_library_file(filename):
            return f"{os.path.relpath(filename, root)}:{lineno} in {name}"
    return None


def started_by(frames: Sequence[Frame], root: str | None) -> str | None:
    """:func:`where_within` ``root``, or ``None`` when it is the frame :func:`where` names
    already (or ``root`` is ``None``): what a report adds as "started by"."""
    if root is None:
        return None
    found = where_within(frames, root)
    if found is None:
        return None
    named = where(frames)
    for filename, lineno, name in frames:  # the frame where() names, shortened alike
        if f"{filename}:{lineno} in {name}" == named:
            if f"{os.path.relpath(filename, root)}:{lineno} in {name}" == found:
                return None
            break
    return found
