"""What a big suite needs to switch a detector on gradually: a warning category, and a
baseline of known leaks (only new ones fail).

A **baseline** is a text file of known leaks, one a line, sorted, with a header comment, so
that a change to it reads well in a diff::

    # pytest-netthreads leak baseline (--leak-baseline): known leaks, one a line, sorted.
    thread tests/test_api.py::test_get | Thread-* (worker) | somelib/transport.py in connect
    socket tests/test_api.py::test_get | somelib/pool.py in _new_conn

A ``thread`` entry names the owner (a test's node id, or the label of a wider-scoped
fixture), the thread's name with every run of digits as ``*`` (``Thread-12 (worker)`` ->
``Thread-* (worker)``) and the site that started it; it matches a leaked thread of that
owner whose name *or* start site is the same (a renamed thread, or a start moved to another
line of the same function, is still known). A ``socket`` entry names the owner and the
creation site. Sites are ``path in function``: relative to the rootdir, without the line
number, so that editing a file does not make its entries stale.

Nothing here imports pytest: :class:`Baseline` reads, matches and writes the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "BASELINE_HEADER",
    "Baseline",
    "BaselineEntry",
    "BaselineError",
    "NetthreadsWarning",
    "normalise_name",
    "short_site",
]


class NetthreadsWarning(UserWarning):
    """A finding of a detector that does not fail its test: one at the ``warn`` level
    (``--thread-leak-level=warn`` ...), or a leak in a test marked ``xfail``."""


_DIGITS = re.compile(r"\d+")
_SITE = re.compile(r"^(?P<path>.*):(?P<line>\d+) in (?P<function>\S+)$")


def normalise_name(name: str) -> str:
    """A thread's name with every run of digits as ``*``: ``Thread-12 (worker)`` ->
    ``Thread-* (worker)``, ``<_thread 1402>`` -> ``<_thread *>``."""
    return _DIGITS.sub("*", name)


def short_site(site: str, root: str | None) -> str:
    """``path:line in function`` (as reports name a site) as ``path in function``, the path
    relative to ``root`` when it is inside it, without the line number."""
    match = _SITE.match(site)
    if match is None:
        return site
    path = match["path"]
    if root is not None and os.path.isabs(path):
        prefix = os.path.join(os.path.abspath(root), "")
        if path.startswith(prefix):
            path = os.path.relpath(path, root)
    return f"{path} in {match['function']}"


@dataclass(frozen=True, order=True)
class BaselineEntry:
    """One known leak.

    Attributes:
        kind: ``"thread"`` or ``"socket"``.
        owner: the test's node id, or the label of a wider-scoped fixture.
        name: the thread's name as :func:`normalise_name` gives it (``""`` for a socket).
        site: where the thread was started or the socket created (``path in function``).
    """

    kind: str
    owner: str
    name: str
    site: str

    def line(self) -> str:
        """The entry as a line of the file."""
        if self.kind == "thread":
            return f"thread {self.owner} | {self.name} | {self.site}"
        return f"socket {self.owner} | {self.site}"

    def matches(self, other: BaselineEntry) -> bool:
        """Whether this entry covers the finding ``other``: same kind and owner, and the
        same site or (a thread) the same normalised name."""
        if (self.kind, self.owner) != (other.kind, other.owner):
            return False
        return self.site == other.site or (self.kind == "thread" and self.name == other.name)


class BaselineError(ValueError):
    """A baseline file that cannot be read: names the file and the line."""


BASELINE_HEADER = """\
# pytest-netthreads leak baseline (--leak-baseline): known leaks, one a line, sorted.
# A leak listed here is reported as baselined and does not fail its test; only new ones do.
# Written by --leak-baseline-update; remove a line once its leak is fixed (the summary lists
# the lines no leak matched any more).
#   thread <test node id> | <thread name, digits as *> | <start site: path in function>
#   socket <test node id> | <creation site: path in function>
"""


class Baseline:
    """The entries of a baseline file.

    Args:
        entries: the known leaks.
    """

    def __init__(self, entries: Iterable[BaselineEntry] = ()) -> None:
        self.entries = sorted(set(entries))
        self._by_owner: dict[tuple[str, str], list[BaselineEntry]] = {}
        for entry in self.entries:
            self._by_owner.setdefault((entry.kind, entry.owner), []).append(entry)

    @classmethod
    def parse(cls, text: str, source: str = "the baseline") -> Baseline:
        """Read the text of a file (``#`` comments and blank lines are skipped).

        Raises:
            BaselineError: a line that is no entry, naming ``source`` and the line number.
        """
        entries = []
        for number, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            kind, _, rest = line.partition(" ")
            fields = rest.rsplit(" | ", 2 if kind == "thread" else 1)
            if kind not in ("thread", "socket") or len(fields) != (3 if kind == "thread" else 2):
                raise BaselineError(
                    f"{source}:{number}: not a baseline entry ('thread <test> | <name> | "
                    f"<site>' or 'socket <test> | <site>'): {raw!r}"
                )
            if kind == "thread":
                entries.append(BaselineEntry("thread", fields[0], fields[1], fields[2]))
            else:
                entries.append(BaselineEntry("socket", fields[0], "", fields[1]))
        return cls(entries)

    @classmethod
    def read(cls, path: str) -> Baseline:
        """The baseline in the file ``path``; an empty one when the file does not exist.

        Raises:
            BaselineError: a line that is no entry.
        """
        try:
            with open(path, encoding="utf-8") as file:
                text = file.read()
        except FileNotFoundError:
            return cls()
        return cls.parse(text, path)

    def match(self, finding: BaselineEntry) -> BaselineEntry | None:
        """The entry that covers ``finding``, if any."""
        for entry in self._by_owner.get((finding.kind, finding.owner), ()):
            if entry.matches(finding):
                return entry
        return None

    def text(self) -> str:
        """The file's text: the header, then one entry a line, sorted."""
        return BASELINE_HEADER + "".join(entry.line() + "\n" for entry in self.entries)

    def write(self, path: str) -> None:
        """Write :meth:`text` to ``path`` (replaced as a whole: a reader never sees half)."""
        temporary = f"{path}.tmp{os.getpid()}"
        with open(temporary, "w", encoding="utf-8") as file:
            file.write(self.text())
        os.replace(temporary, path)
