"""TLS: the session CA (made on first use, its files removed at the end), its fixtures, the key
log option, and a clean exit on SIGTERM while key files exist."""

from __future__ import annotations

import signal
import threading
from typing import TYPE_CHECKING

import pytest

from . import _config

if TYPE_CHECKING:
    import ssl

    from ..tls import CertificateAuthority

def add_options(parser: pytest.Parser, group: pytest.OptionGroup) -> None:
    group.addoption(
        "--tls-keylog-file",
        metavar="PATH",
        default=None,
        help="append the TLS session secrets of every connection made with the session CA's "
        "contexts to PATH (NSS key log format, for Wireshark), a file created mode 0600. "
        "Off by default.",
    )
    parser.addini(
        "tls_keylog_file",
        help="like --tls-keylog-file; a relative path is relative to the ini file.",
        default=None,
    )


def _tls_keylog_file(config: pytest.Config) -> tuple[str, str] | None:
    """The key log path asked for, absolute, and where it was asked for: a relative
    ``--tls-keylog-file`` is relative to the directory pytest was started in (not to wherever
    a test has changed to), a relative ini value to the ini file's directory."""
    value, where = _config.setting(config, "tls_keylog_file")
    if not value:
        return None
    if where.startswith("--"):
        return str(config.invocation_params.dir / str(value)), where
    base = config.inipath.parent if config.inipath is not None else config.rootpath
    return str(base / str(value)), where


def configure(config: pytest.Config) -> None:
    keylog = _tls_keylog_file(config)
    if keylog is not None:
        # Checked (and the file created, mode 0600) now: a bad path is a usage error, not
        # the error of every TLS test. Standard library only: trustme is not imported.
        from .._runtime.private_files import ensure_private_file

        try:
            ensure_private_file(*keylog)
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None


_SESSION_CA = pytest.StashKey["CertificateAuthority"]()


def session_ca(config: pytest.Config) -> CertificateAuthority:
    """The session's CA, made on first use and closed (its files removed) when the session
    ends. The per-test TLS fixtures get it here rather than by requesting ``tls_ca``: a
    session-scoped dependency costs a fresh server's worth of pytest bookkeeping per test."""
    ca = config.stash.get(_SESSION_CA, None)
    if ca is None:
        from ..tls import CertificateAuthority  # trustme is imported only by sessions using TLS

        _exit_on_sigterm(config)
        keylog = _tls_keylog_file(config)
        ca = config.stash[_SESSION_CA] = CertificateAuthority(
            keylog_file=None if keylog is None else keylog[0]
        )
        config.add_cleanup(ca.close)  # before _exit_on_sigterm's clean-up: cleanups are LIFO
    return ca


def _exit_on_sigterm(config: pytest.Config) -> None:
    """Make SIGTERM end the session the way Ctrl-C does (fixtures torn down, the CA's key
    files removed), with exit status 143 (128 + SIGTERM), rather than kill the process on
    the spot. Only if SIGTERM has its default disposition (nobody else handles it) and we
    are in the main thread; the default is restored when the session ends, and on the first
    SIGTERM, so that a second one kills at once."""
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        return

    def exit_session(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        pytest.exit(f"pytest-netthreads: received {signal.Signals(signum).name}", 128 + signum)

    def restore() -> None:
        if signal.getsignal(signal.SIGTERM) is exit_session:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)

    signal.signal(signal.SIGTERM, exit_session)
    config.add_cleanup(restore)


@pytest.fixture(scope="session")
def tls_ca(request: pytest.FixtureRequest) -> CertificateAuthority:
    """The session's test certificate authority (ECDSA keys, root plus intermediate).

    ``tls_ca.server_context(preset="valid")`` and ``tls_ca.client_context()`` make
    contexts; files (``tls_ca.ca_bundle_path()``) are removed when the session ends.
    """
    return session_ca(request.config)


@pytest.fixture
def tls_client_context(tls_ca: CertificateAuthority) -> ssl.SSLContext:
    """A fresh client ``ssl.SSLContext`` trusting the session CA (yours to change)."""
    return tls_ca.client_context()
