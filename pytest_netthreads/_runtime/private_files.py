"""Files holding secrets: key log files kept private, and temporary directories whose owner
process can be told dead, so that what a killed process left behind is removed later.

Standard library only (the plugin uses it without importing :mod:`pytest_netthreads.tls`).
POSIX: without :mod:`fcntl` (Windows) directories carry no owner lock and no stale directory
is ever removed.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import sys
import tempfile

if sys.platform != "win32":
    import fcntl

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_LOCK_NAME = ".owner.lock"


def _euid() -> int | None:
    geteuid = getattr(os, "geteuid", None)
    return None if geteuid is None else int(geteuid())


def ensure_private_file(path: str, what: str) -> None:
    """Create ``path`` with mode 0600 if it does not exist; else check that it is a regular
    file of this user, and take away group and other permissions it has.

    For a file another program (:mod:`ssl`, which opens it with the process umask) then
    appends secrets to. The last component may not be a symbolic link (a link planted in a
    shared directory would redirect the secrets), nor a FIFO or device.

    Raises:
        ValueError: naming ``what`` (the parameter or option) and saying why.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _NONBLOCK | _NOFOLLOW | _CLOEXEC
    try:
        # O_NONBLOCK: opening a FIFO without a reader fails (ENXIO) rather than blocking.
        fd = os.open(path, flags, 0o600)
    except ValueError:  # an embedded NUL character
        raise ValueError(f"{what} must not contain NUL characters, got {path!r}") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            reason = "it is a symbolic link; give the path of the file itself"
        elif exc.errno == errno.ENXIO:
            reason = "it is not a regular file"
        else:
            reason = exc.strerror or str(exc)
        raise ValueError(f"{what} {path!r} cannot be opened for appending: {reason}") from exc
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{what} {path!r} is not a regular file")
        euid = _euid()
        if euid is not None and st.st_uid != euid:
            raise ValueError(
                f"{what} {path!r} belongs to another user (uid {st.st_uid}), who could read "
                "the TLS secrets written to it"
            )
        mode = stat.S_IMODE(st.st_mode)
        if mode & 0o077 and hasattr(os, "fchmod"):
            os.fchmod(fd, mode & 0o700)
    finally:
        os.close(fd)


class OwnedDirectory:
    """A private temporary directory (mode 0700) whose owner process can be told dead.

    Named ``<prefix><pid>-<random>``. For as long as the directory exists its owner holds
    an exclusive :func:`fcntl.flock` on the ``.owner.lock`` file inside. The kernel releases
    the lock when the process ends, however it ends (SIGKILL, ``os._exit``), so
    :func:`remove_stale_directories` can tell a stale directory (lock free) from a live one
    (lock held) without trusting pids, which are reused and differ between pid namespaces.

    Args:
        prefix: the start of the directory's name; :func:`remove_stale_directories` takes
            the same one.
        parent: where to make it (default: :func:`tempfile.gettempdir`).
    """

    def __init__(self, prefix: str, parent: str | None = None) -> None:
        self.owner_pid = os.getpid()
        self.path = tempfile.mkdtemp(prefix=f"{prefix}{self.owner_pid}-", dir=parent)
        try:
            self._lock_fd = _lock_new_directory(self.path)
        except BaseException:
            shutil.rmtree(self.path, ignore_errors=True)
            raise

    def remove(self) -> None:
        """Remove the directory and everything in it, then release the lock.

        Does nothing in a forked child: the directory belongs to the process that made it.
        """
        if os.getpid() != self.owner_pid:
            return
        shutil.rmtree(self.path, ignore_errors=True)
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)


def _lock_new_directory(path: str) -> int | None:
    if sys.platform == "win32":  # pragma: no cover
        return None
    # The lock file is created and locked under another name, then renamed into place, so
    # that a lock file under the real name is always held while its owner lives: a sweeper
    # can never take the lock in the instant between its creation and its locking.
    temporary = os.path.join(path, _LOCK_NAME + ".new")
    fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:  # a file system without locks (ENOLCK): never taken for stale then
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    try:
        os.rename(temporary, os.path.join(path, _LOCK_NAME))
    except BaseException:
        os.close(fd)
        raise
    return fd


def remove_stale_directories(prefix: str, parent: str | None = None) -> list[str]:
    """Remove the :class:`OwnedDirectory` directories named with ``prefix`` in ``parent``
    (default: :func:`tempfile.gettempdir`) whose owner process is gone; return their paths.

    Only directories of this user are looked at; a directory whose lock is held (its owner
    lives, in this process or another) or that has no lock file (being made right now, or
    not one of ours) is left alone. Errors are ignored: this is a best-effort clean-up.
    """
    if sys.platform == "win32":  # pragma: no cover
        return []
    name_pattern = re.compile(re.escape(prefix) + r"[0-9]+-[A-Za-z0-9_]+")
    euid = _euid()
    removed: list[str] = []
    try:
        with os.scandir(tempfile.gettempdir() if parent is None else parent) as entries:
            candidates = [e for e in entries if name_pattern.fullmatch(e.name)]
    except OSError:
        return removed
    for entry in candidates:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if stat.S_ISDIR(st.st_mode) and st.st_uid == euid and _remove_if_stale(entry.path):
            removed.append(entry.path)
    return removed


def _remove_if_stale(path: str) -> bool:
    try:
        fd = os.open(os.path.join(path, _LOCK_NAME), os.O_RDONLY | _NOFOLLOW | _CLOEXEC)
    except OSError:
        return False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # held: the owner lives
        shutil.rmtree(path, ignore_errors=True)  # holding the lock, as its owner would
        return not os.path.lexists(path)
    finally:
        os.close(fd)
