"""One stacks module: capture, format, where, and which frames are the test runner's.

The leak, deadlock, lock-order and server-stop reports all format their stacks here; their
exact texts are asserted by their own tests. These check the module against the standard
library's own formatting and on a project that lives in a directory called ``pytest``.
"""

from __future__ import annotations

import sys
import threading
import traceback
from collections.abc import Iterator
from pathlib import Path

import pluggy
import pytest

from pytest_netthreads._runtime import stacks
from pytest_netthreads._runtime.stacks import (
    NO_FRAMES,
    capture,
    format_frames,
    format_thread_stack,
    is_library_file,
    is_runner_file,
    where,
)
from pytest_netthreads.detect.lockorder import LockOrderChecker


@pytest.fixture
def parked() -> Iterator[threading.Thread]:
    """A thread blocked at a known line until the test ends."""
    release = threading.Event()
    started = threading.Event()

    def park() -> None:
        started.set()
        release.wait(60)

    thread = threading.Thread(target=park, name="parked")
    thread.start()
    assert started.wait(30)
    yield thread
    release.set()
    thread.join(30)


def test_runner_files_are_found_by_where_the_runner_is_installed(tmp_path: Path) -> None:
    assert is_runner_file(str(Path(pytest.__file__).parent.parent / "_pytest" / "runner.py"))
    assert is_runner_file(pytest.__file__)
    assert is_runner_file(pluggy.__file__)
    assert is_runner_file("<frozen runpy>")
    assert not is_runner_file(__file__)
    assert not is_runner_file(threading.__file__)
    # A project of one's own in a directory named like the runner is not the runner.
    for name in ("pytest", "_pytest", "pluggy"):
        assert not is_runner_file(str(tmp_path / name / "test_x.py"))


def test_library_files() -> None:
    assert is_library_file(threading.__file__)
    assert is_library_file(pytest.__file__)  # an installed package
    assert is_library_file(stacks.__file__)  # the kit
    assert not is_library_file(__file__)


def test_capture_stops_at_the_runner_and_where_names_the_callers_own_line() -> None:
    def inner() -> tuple[tuple[str, int, str], ...]:
        return capture(sys._getframe())

    frames = inner()
    assert [name for _, _, name in frames[-2:]] == [
        "test_capture_stops_at_the_runner_and_where_names_the_callers_own_line",
        "inner",
    ]
    assert not any(is_runner_file(filename) for filename, _, _ in frames)
    assert where(frames) == f"{__file__}:{frames[-1][1]} in inner"
    assert len(capture(sys._getframe(), limit=1)) == 1
    # Only library frames: the innermost one is named.
    library = ((threading.__file__, 10, "a"), (threading.__file__, 20, "b"))
    assert where(library) == f"{threading.__file__}:20 in b"
    assert where(()) == "(unknown)"


def test_format_frames_reads_source_lines_like_a_traceback() -> None:
    frames, summary = capture(sys._getframe()), traceback.extract_stack()  # at one line
    assert format_frames(frames) == "".join(traceback.format_list(summary[-len(frames) :]))
    assert format_frames(frames).endswith(
        "    frames, summary = capture(sys._getframe()), traceback.extract_stack()  # at one line\n"
    )
    assert format_frames(()) == NO_FRAMES == "    (no frames recorded)\n"


def test_a_thread_stack_is_the_standard_librarys_format(parked: threading.Thread) -> None:
    frame = sys._current_frames()[parked.ident or 0]
    # What the server-stop and proxy-stop reports showed before (traceback.format_stack).
    assert format_thread_stack(parked) == "".join(traceback.format_stack(frame))
    assert "release.wait(60)" in format_thread_stack(parked)
    # Leaving out the frames at its top that come from threading.py: the park() call shows.
    top = format_thread_stack(parked, skip_prefix=threading.__file__)
    assert top.rstrip().endswith("release.wait(60)")


def test_hiding_the_runner_counts_its_frames() -> None:
    me = threading.current_thread()
    text = format_thread_stack(me, hide_runner=True)
    summary = traceback.extract_stack()
    hidden = [entry for entry in summary if is_runner_file(entry.filename)]
    assert hidden  # this test runs under pytest
    assert text.startswith(f"    ({len(hidden)} frames of pytest and pluggy not shown)\n")
    assert "_pytest" not in text.replace(f"{len(hidden)} frames of pytest", "")


def test_a_thread_not_running_has_no_stack() -> None:
    thread = threading.Thread(target=int)
    assert format_thread_stack(thread) == "    (no stack: the thread is not running)\n"


def test_lock_order_stacks_keep_a_project_in_a_directory_named_pytest(tmp_path: Path) -> None:
    """The old filter hid every frame under any directory named ``pytest`` (by its name), so
    the stacks of a lock-order report on such a project showed nothing of the project."""
    package = tmp_path / "pytest" / "project"
    package.mkdir(parents=True)
    (package / "inverted_locks.py").write_text(
        "import threading\n"
        "\n"
        "def make():\n"
        "    first = threading.Lock()\n"
        "    second = threading.Lock()\n"
        "    return first, second\n"
        "\n"
        "def take(a, b):\n"
        "    with a:\n"
        "        with b:  # the second acquisition\n"
        "            pass\n"
    )
    sys.path.insert(0, str(package))
    try:
        with LockOrderChecker() as checker:
            import inverted_locks  # type: ignore[import-not-found]

            first, second = inverted_locks.make()
            inverted_locks.take(first, second)
            inverted_locks.take(second, first)
            (report,) = checker.take_reports()
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("inverted_locks", None)
    for edge in report.edges:
        stack = "".join(edge.stack)
        assert "inverted_locks.py\", line 10, in take" in stack
        assert "with b:  # the second acquisition" in stack
        assert __file__ in stack  # this test's frame too (not the runner's)
