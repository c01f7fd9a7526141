"""The certificate authority, its presets and TLS servers, through real sockets and clients."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import socket
import ssl
import stat
import threading
from collections.abc import Iterator

import httpx
import pytest
import requests
import urllib3
from cryptography import x509

from pytest_netthreads import HandlerError, ServerConnection, ThreadedServer, handlers
from pytest_netthreads.tls import (
    PRESETS,
    VERIFY_CODES,
    CertificateAuthority,
    Preset,
    record_sni,
)
from tests._util import connect, recv_exactly

NEGATIVE: list[Preset] = [p for p in PRESETS if p != "valid"]


@pytest.fixture(scope="module")
def ca() -> Iterator[CertificateAuthority]:
    with CertificateAuthority() as authority:
        yield authority


def tls_connect(
    address: object, context: ssl.SSLContext, hostname: str = "localhost"
) -> ssl.SSLSocket:
    """A verified TLS client connection; the raw socket is closed if the handshake fails."""
    raw = connect(address)
    try:
        return context.wrap_socket(raw, server_hostname=hostname)
    except BaseException:
        raw.close()
        raise


def echo_once(sock: ssl.SSLSocket, data: bytes = b"ping") -> bytes:
    sock.sendall(data)
    return recv_exactly(sock, len(data))


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    """The process umask set to ``mask`` (022: what most shells have) for the block."""
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- presets ------------------------------------------------------------------------------


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
def test_valid_preset_passes_a_verifying_client(ca: CertificateAuthority, hostname: str) -> None:
    with ThreadedServer(handlers.echo, ssl_context=ca.server_context()) as srv:
        with tls_connect(srv.address, ca.client_context(), hostname) as client:
            assert echo_once(client, b"hello over tls") == b"hello over tls"
            cipher = client.cipher()
            version = client.version()
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.how_closed == "peer-eof"
    # Bytes are counted in plain text, after decryption.
    assert record.bytes_in == record.bytes_out == len(b"hello over tls")
    assert record.tls is not None
    assert record.tls["version"] == version
    assert cipher is not None
    assert record.tls["cipher"] == cipher[0]
    # Clients send SNI for host names, never for IP addresses (RFC 6066).
    assert record.tls["sni"] == (hostname if hostname == "localhost" else None)
    assert record.tls["client_cert"] is None
    assert record.tls["alpn"] is None


def test_ipv6_loopback_is_a_valid_identity(ca: CertificateAuthority) -> None:
    with (
        ThreadedServer(handlers.echo, host="::1", ssl_context=ca.server_context()) as srv,
        tls_connect(srv.address, ca.client_context(), "::1") as client,
    ):
        assert echo_once(client) == b"ping"


@pytest.mark.parametrize("hostname", ["localhost", "127.0.0.1"])
@pytest.mark.parametrize("preset", NEGATIVE)
def test_negative_preset_fails_verification_and_is_recorded(
    ca: CertificateAuthority, preset: Preset, hostname: str
) -> None:
    with ThreadedServer(handlers.echo, ssl_context=ca.server_context(preset)) as srv:
        with pytest.raises(ssl.SSLCertVerificationError) as info:
            tls_connect(srv.address, ca.client_context(), hostname)
        (record,) = srv.wait_for_connections(1, closed=True)
    # stop() (the end of the with block) raised nothing: a refused certificate is not a
    # server error. The record says what happened.
    assert info.value.verify_code in VERIFY_CODES[preset]
    assert record.how_closed == "handshake-failed"
    assert record.error is not None
    assert record.error.startswith("TLS handshake failed")
    assert record.tls is None


def test_verify_messages_are_the_ones_users_know(ca: CertificateAuthority) -> None:
    expected: dict[Preset, str] = {
        "expired": "certificate has expired",
        "not-yet-valid": "certificate is not yet valid",
        "wrong-host": "Hostname mismatch",
        "untrusted": "unable to get local issuer certificate",
        "missing-intermediate": "unable to get local issuer certificate",
    }
    for preset, message in expected.items():
        with (
            ThreadedServer(handlers.echo, ssl_context=ca.server_context(preset)) as srv,
            pytest.raises(ssl.SSLCertVerificationError, match=message),
        ):
            tls_connect(srv.address, ca.client_context())
    # OpenSSL 1.1 wrote "self signed", 3.x "self-signed".
    with (
        ThreadedServer(handlers.echo, ssl_context=ca.server_context("self-signed")) as srv,
        pytest.raises(ssl.SSLCertVerificationError, match=r"self.signed certificate"),
    ):
        tls_connect(srv.address, ca.client_context())


def test_missing_intermediate_is_the_valid_certificate_without_its_chain(
    ca: CertificateAuthority,
) -> None:
    # A client that already holds the intermediate accepts it: only the chain is missing.
    client = ca.client_context()
    client.load_verify_locations(cadata=ca.intermediate.cert_pem.bytes().decode())
    with (
        ThreadedServer(handlers.echo, ssl_context=ca.server_context("missing-intermediate")) as srv,
        tls_connect(srv.address, client) as conn,
    ):
        assert echo_once(conn) == b"ping"


def strict(context: ssl.SSLContext) -> ssl.SSLContext:
    # What Python 3.13's create_default_context() sets by default.
    context.verify_flags |= ssl.VERIFY_X509_STRICT | ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


def test_certificates_pass_x509_strict_verification(ca: CertificateAuthority) -> None:
    server_context = ca.server_context(client_certs="required")
    assert server_context.verify_flags & ssl.VERIFY_X509_STRICT
    with ThreadedServer(handlers.echo, ssl_context=server_context) as srv:
        with tls_connect(srv.address, strict(ca.client_context(client_cert=True))) as client:
            assert echo_once(client) == b"ping"
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.how_closed == "peer-eof"
    assert record.tls is not None
    assert record.tls["client_cert"] is not None


def test_negative_presets_fail_the_same_way_under_strict_verification(
    ca: CertificateAuthority,
) -> None:
    for preset in NEGATIVE:
        with ThreadedServer(handlers.echo, ssl_context=ca.server_context(preset)) as srv:
            with pytest.raises(ssl.SSLCertVerificationError) as info:
                tls_connect(srv.address, strict(ca.client_context()))
            assert info.value.verify_code in VERIFY_CODES[preset], preset


# -- mutual TLS ---------------------------------------------------------------------------


def test_mutual_tls_required_accepts_a_client_certificate(ca: CertificateAuthority) -> None:
    with ThreadedServer(
        handlers.echo, ssl_context=ca.server_context(client_certs="required")
    ) as srv:
        with tls_connect(srv.address, ca.client_context(client_cert=True)) as client:
            assert echo_once(client) == b"ping"
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.tls is not None
    cert = record.tls["client_cert"]
    assert ("DNS", "client.netthreads.test") in cert["subjectAltName"]
    assert isinstance(record.tls["client_cert_der"], bytes)
    assert ssl.DER_cert_to_PEM_cert(record.tls["client_cert_der"]).startswith("-----BEGIN")


@pytest.mark.parametrize("client_cert", [False, "untrusted"])
def test_mutual_tls_required_refuses_clients_without_a_trusted_certificate(
    ca: CertificateAuthority, client_cert: bool | str
) -> None:
    with ThreadedServer(
        handlers.echo, ssl_context=ca.server_context(client_certs="required")
    ) as srv:
        # TLS 1.3: the client's handshake completes before the server has checked its
        # certificate; the refusal arrives as an alert on the client's first read.
        with pytest.raises(ssl.SSLError, match=r"(?i)certificate required|unknown ca"):
            client = tls_connect(srv.address, ca.client_context(client_cert=client_cert))  # type: ignore[arg-type]
            with client:
                echo_once(client)
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.how_closed == "handshake-failed"
    assert record.error is not None
    reason = "PEER_DID_NOT_RETURN_A_CERTIFICATE" if client_cert is False else "verify failed"
    assert reason in record.error


def test_mutual_tls_optional_accepts_both_and_refuses_untrusted(
    ca: CertificateAuthority,
) -> None:
    with ThreadedServer(
        handlers.echo, ssl_context=ca.server_context(client_certs="optional")
    ) as srv:
        with tls_connect(srv.address, ca.client_context(client_cert=True)) as client:
            assert echo_once(client) == b"ping"
        with tls_connect(srv.address, ca.client_context()) as client:
            assert echo_once(client) == b"ping"
        with pytest.raises(ssl.SSLError, match=r"(?i)unknown ca"):
            client = tls_connect(srv.address, ca.client_context(client_cert="untrusted"))
            with client:
                echo_once(client)
        records = srv.wait_for_connections(3, closed=True)
    with_cert, without, untrusted = sorted(records, key=lambda r: r.index)
    assert with_cert.tls is not None
    assert with_cert.tls["client_cert"] is not None
    assert without.tls is not None
    assert without.tls["client_cert"] is None
    assert untrusted.how_closed == "handshake-failed"


# -- versions, ALPN, key log ----------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.2", "1.3"])
def test_server_pins_the_tls_version(ca: CertificateAuthority, version: str) -> None:
    context = ca.server_context(minimum_version=version, maximum_version=version)
    with ThreadedServer(handlers.echo, ssl_context=context) as srv:
        with tls_connect(srv.address, ca.client_context()) as client:
            assert client.version() == f"TLSv{version}"
            assert echo_once(client) == b"ping"
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.tls is not None
    assert record.tls["version"] == f"TLSv{version}"


def test_version_mismatch_is_a_handshake_failure(ca: CertificateAuthority) -> None:
    context = ca.server_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    with ThreadedServer(handlers.echo, ssl_context=context) as srv:
        with pytest.raises(ssl.SSLError, match=r"(?i)version"):
            tls_connect(srv.address, ca.client_context(maximum_version="1.2"))
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.how_closed == "handshake-failed"


def test_alpn_selection_is_recorded(ca: CertificateAuthority) -> None:
    context = ca.server_context(alpn=["h2", "http/1.1"])
    with ThreadedServer(handlers.echo, ssl_context=context) as srv:
        with tls_connect(srv.address, ca.client_context(alpn=["http/1.1"])) as client:
            assert client.selected_alpn_protocol() == "http/1.1"
            assert echo_once(client) == b"ping"
        with tls_connect(srv.address, ca.client_context(alpn=["h2", "http/1.1"])) as client:
            assert client.selected_alpn_protocol() == "h2"
            assert echo_once(client) == b"ping"
        records = sorted(srv.wait_for_connections(2, closed=True), key=lambda r: r.index)
    assert [r.tls and r.tls["alpn"] for r in records] == ["http/1.1", "h2"]


def test_key_log_file_is_opt_in(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSLKEYLOGFILE", raising=False)  # client contexts would follow it
    keylog = os.path.join(tmp_path, "keys.log")
    with CertificateAuthority() as plain:
        assert plain.server_context().keylog_filename is None
        assert plain.client_context().keylog_filename is None
    with (
        CertificateAuthority(keylog_file=keylog) as ca,
        ThreadedServer(handlers.echo, ssl_context=ca.server_context()) as srv,
    ):
        with tls_connect(srv.address, ca.client_context()) as client:
            assert echo_once(client) == b"ping"
        srv.wait_for_connections(1, closed=True)
    with open(keylog) as f:
        lines = f.read().splitlines()
    # One handshake, logged by both ends (both contexts came from the CA).
    secrets = [line for line in lines if line.startswith("CLIENT_TRAFFIC_SECRET_0 ")]
    assert len(secrets) == 2
    assert secrets[0] == secrets[1]


def handshake_with_key_log(ca: CertificateAuthority) -> None:
    with ThreadedServer(handlers.echo, ssl_context=ca.server_context()) as srv:
        with tls_connect(srv.address, ca.client_context()) as client:
            assert echo_once(client) == b"ping"
        srv.wait_for_connections(1, closed=True)


def test_key_log_file_is_private_under_umask_022(tmp_path: os.PathLike[str]) -> None:
    keylog = os.path.join(tmp_path, "keys.log")
    with umask(0o022), CertificateAuthority(keylog_file=keylog) as ca:
        assert mode(keylog) == 0o600  # created at once, before any context opens it
        handshake_with_key_log(ca)
    assert mode(keylog) == 0o600
    with open(keylog) as f:
        assert f.read().count("CLIENT_TRAFFIC_SECRET_0 ") == 2


def test_existing_key_log_file_is_made_private_and_appended_to(
    tmp_path: os.PathLike[str],
) -> None:
    keylog = os.path.join(tmp_path, "keys.log")
    with open(keylog, "w") as f:
        f.write("# from an earlier run\n")
    os.chmod(keylog, 0o644)
    with CertificateAuthority(keylog_file=keylog) as ca:
        assert mode(keylog) == 0o600
        # Removed during the session (by the user): the next context creates it 0600 again.
        os.unlink(keylog)
        with umask(0o022):
            handshake_with_key_log(ca)
    assert mode(keylog) == 0o600
    with open(keylog) as f:
        assert f.read().count("CLIENT_TRAFFIC_SECRET_0 ") >= 1


def test_sslkeylogfile_is_followed_by_client_contexts_and_kept_private(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Python's ssl.create_default_context() follows SSLKEYLOGFILE, and client_context() is
    # built like it: documented, and the file is made private like keylog_file.
    keylog = os.path.join(tmp_path, "env-keys.log")
    monkeypatch.setenv("SSLKEYLOGFILE", keylog)
    with umask(0o022), CertificateAuthority() as ca:
        assert ca.server_context().keylog_filename is None
        assert ca.client_context().keylog_filename == keylog
        handshake_with_key_log(ca)
    assert mode(keylog) == 0o600
    with open(keylog) as f:
        assert f.read().count("CLIENT_TRAFFIC_SECRET_0 ") == 1  # the client's end only
    # keylog_file takes precedence.
    own = os.path.join(tmp_path, "own.log")
    with CertificateAuthority(keylog_file=own) as ca:
        assert ca.client_context().keylog_filename == own
    # A symbolic link in its place is refused, at the call that would open it.
    os.unlink(keylog)
    os.symlink(own, keylog)
    with CertificateAuthority() as ca, pytest.raises(ValueError, match="SSLKEYLOGFILE"):
        ca.client_context()


class _BytesPath:
    def __fspath__(self) -> bytes:
        return b"/tmp/keys.log"


def _keylog_cases(tmp: str) -> list[tuple[object, type[Exception], str]]:
    fifo = os.path.join(tmp, "fifo")
    os.mkfifo(fifo)
    target = os.path.join(tmp, "target.log")
    link = os.path.join(tmp, "link.log")
    os.symlink(target, link)  # dangling: following it would create target.log
    theirs = os.path.join(tmp, "theirs.log")
    with open(theirs, "w"):
        pass
    os.chmod(theirs, 0o666)
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
        theirs_error = "belongs to another user"
    else:
        theirs = "/etc/hostname"  # root's, not writable: refused either way
        theirs_error = "cannot be opened for appending"
    return [
        (b"/tmp/keys.log", TypeError, "keylog_file must be a path"),
        (_BytesPath(), TypeError, "keylog_file must be a path"),
        ("", ValueError, "keylog_file must be a non-empty path"),
        (tmp, ValueError, "keylog_file .* cannot be opened for appending: Is a directory"),
        (os.path.join(tmp, "a\0b"), ValueError, "keylog_file must not contain NUL"),
        (os.path.join(tmp, "x" * 5000), ValueError, "cannot be opened .*too long"),
        (os.path.join(tmp, "missing", "k.log"), ValueError, "No such file or directory"),
        (link, ValueError, "is a symbolic link"),
        (fifo, ValueError, "not a regular file"),
        ("/dev/null", ValueError, "not a regular file"),
        (theirs, ValueError, theirs_error),
    ]


def test_bad_key_log_files_are_refused_at_construction(tmp_path: os.PathLike[str]) -> None:
    tmp = os.fspath(tmp_path)
    for value, error, match in _keylog_cases(tmp):
        with pytest.raises(error, match=match):
            CertificateAuthority(keylog_file=value)  # type: ignore[arg-type]
    # Nothing was created through the dangling link.
    assert not os.path.lexists(os.path.join(tmp, "target.log"))


# -- files, caching, lifecycle --------------------------------------------------------------


def test_files_only_on_request_private_and_removed_at_close() -> None:
    ca = CertificateAuthority()
    ca.server_context()
    ca.client_context(client_cert=True)
    written_before = ca.files_dir
    assert written_before is None  # contexts are built without writing keys to disk
    bundle = ca.ca_bundle_path()
    assert ca.ca_bundle_path() == bundle
    server = ca.server_cert_files()
    client = ca.client_cert_files()
    directory = ca.files_dir
    assert directory is not None
    assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
    for path in (bundle, server.cert, server.key, client.cert, client.key):
        assert os.path.dirname(path) == directory
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with open(bundle, "rb") as f:
        assert f.read() == ca.cert_pem
    # The files work: a server loaded from them is trusted by a client using the bundle.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server.cert, server.key)
    with (
        ThreadedServer(handlers.echo, ssl_context=context) as srv,
        tls_connect(srv.address, ssl.create_default_context(cafile=bundle)) as conn,
    ):
        assert echo_once(conn) == b"ping"
    ca.close()
    assert not os.path.exists(directory)
    ca.close()  # twice is fine
    with pytest.raises(RuntimeError, match="closed"):
        ca.server_context("expired")


def test_server_contexts_are_cached_per_arguments(ca: CertificateAuthority) -> None:
    assert ca.server_context() is ca.server_context("valid")
    assert ca.server_context("expired") is not ca.server_context()
    assert ca.server_context(alpn=["h2"]) is ca.server_context(alpn=("h2",))
    assert ca.server_context(alpn=["h2"]) is not ca.server_context()
    # Client contexts are the caller's to change: a fresh one every time.
    assert ca.client_context() is not ca.client_context()


def test_contexts_built_from_many_threads_at_once() -> None:
    with CertificateAuthority() as fresh:
        seen: list[ssl.SSLContext] = []
        barrier = threading.Barrier(4)

        def build() -> None:
            barrier.wait(10)
            seen.append(fresh.server_context("wrong-host"))

        threads = [threading.Thread(target=build) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(seen) == 4
        assert all(c is seen[0] for c in seen)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda ca: ca.server_context("bogus"), ValueError, "preset must be one of"),
        (lambda ca: ca.server_context(client_certs="yes"), ValueError, "client_certs must be"),
        (lambda ca: ca.server_context(minimum_version="1.1"), ValueError, "minimum_version"),
        (lambda ca: ca.client_context(maximum_version=13), TypeError, "maximum_version"),
        (lambda ca: ca.server_context(alpn="h2"), TypeError, "alpn must be a sequence"),
        (lambda ca: ca.client_context(alpn=[""]), ValueError, "alpn entries"),
        (lambda ca: ca.client_context(alpn=[b"h2"]), TypeError, "alpn entries"),
        (lambda ca: ca.client_context(client_cert="yes"), ValueError, "client_cert must be"),
        (lambda ca: ca.server_cert_files("bogus"), ValueError, "preset must be one of"),
        (lambda ca: ca.server_context(1), TypeError, "preset must be one of"),
        (lambda ca: ca.server_cert_files(None), TypeError, "preset must be one of"),
        (lambda ca: ca.server_context(client_certs=True), TypeError, "client_certs must be"),
        # 1 == True and 0 == False: both used to pass, and to present the untrusted client
        # certificate.
        (lambda ca: ca.client_context(client_cert=1), TypeError, "client_cert must be"),
        (lambda ca: ca.client_context(client_cert=0), TypeError, "client_cert must be"),
        (
            lambda ca: ca.server_context(minimum_version="1.3", maximum_version="1.2"),
            ValueError,
            "minimum_version must not be above maximum_version",
        ),
        (
            lambda ca: ca.client_context(
                minimum_version=ssl.TLSVersion.TLSv1_3, maximum_version="TLSv1.2"
            ),
            ValueError,
            "minimum_version must not be above maximum_version",
        ),
        (lambda ca: ca.issue_cert(), ValueError, "identities must be non-empty"),
        (lambda ca: ca.issue_cert(3), TypeError, "identities must be host names"),
        (lambda ca: ca.issue_cert("a b"), ValueError, "identities must be host names.*'a b'"),
        (lambda ca: ca.issue_cert("x", not_before="2020"), TypeError, "not_before must be"),
        (
            lambda ca: ca.issue_cert("x", not_after=datetime.date(2030, 1, 1)),
            TypeError,
            "not_after must be a datetime",
        ),
        (
            lambda ca: ca.issue_cert(
                "x",
                not_before=datetime.datetime(2030, 1, 1),
                not_after=datetime.datetime(2029, 1, 1, tzinfo=datetime.timezone.utc),
            ),
            ValueError,
            "not_after must be later than not_before",
        ),
    ],
)
def test_bad_arguments_are_named(
    ca: CertificateAuthority, call: object, error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call(ca)  # type: ignore[operator]


def test_bad_constructor_arguments_are_named() -> None:
    with pytest.raises(TypeError, match="identities must be a sequence"):
        CertificateAuthority(identities="localhost")
    with pytest.raises(TypeError, match="identities must be a sequence"):
        CertificateAuthority(identities=b"localhost")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="identities must be non-empty"):
        CertificateAuthority(identities=[])
    with pytest.raises(ValueError, match="identities must be non-empty"):
        CertificateAuthority(identities=["localhost", ""])
    with pytest.raises(TypeError, match="identities must be host names"):
        CertificateAuthority(identities=["localhost", 3])  # type: ignore[list-item]
    # A host name that is not one fails here, not at the first server_context() call.
    for bad in ("a b", "x" * 64 + ".test", "a..b"):
        with pytest.raises(ValueError, match="identities must be host names, IP addresses"):
            CertificateAuthority(identities=["localhost", bad])
    with pytest.raises(TypeError, match="keylog_file must be a path"):
        CertificateAuthority(keylog_file=3)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="organization must be a non-empty str"):
        CertificateAuthority(organization=None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="organization must be a non-empty str"):
        CertificateAuthority(organization="")


def test_an_int_tls_version_is_refused_even_after_the_context_was_cached(
    ca: CertificateAuthority,
) -> None:
    # ssl.TLSVersion is an IntEnum: 771 == TLSVersion.TLSv1_2 and hashes the same, so the
    # fast path used to return the cached context for what validation refuses.
    for value in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.MAXIMUM_SUPPORTED):
        context = ca.server_context(minimum_version=value)
        assert ca.server_context(minimum_version=value) is context
        with pytest.raises(TypeError, match=r"minimum_version must be an ssl\.TLSVersion"):
            ca.server_context(minimum_version=int(value))
    assert ca.server_context(minimum_version="1.2") is ca.server_context(
        minimum_version=ssl.TLSVersion.TLSv1_2
    )


def test_custom_identities(ca: CertificateAuthority) -> None:
    with (
        CertificateAuthority(identities=["db.test"]) as custom,
        ThreadedServer(handlers.echo, ssl_context=custom.server_context()) as srv,
    ):
        with tls_connect(srv.address, custom.client_context(), "db.test") as conn:
            assert echo_once(conn) == b"ping"
        with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
            tls_connect(srv.address, custom.client_context(), "localhost")
        # Another CA's clients do not trust it.
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_connect(srv.address, ca.client_context(), "db.test")


# -- the server side: worker threads, failures, stop ----------------------------------------


def test_handshake_runs_in_the_connection_worker_thread(ca: CertificateAuthority) -> None:
    handshake_threads: list[str] = []

    def sni(sock: ssl.SSLSocket, name: str | None, context: ssl.SSLContext) -> None:
        handshake_threads.append(threading.current_thread().name)
        record_sni(sock, name, context)

    # A user's own context: build it from the preset's files.
    files = ca.server_cert_files()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(files.cert, files.key)
    context.sni_callback = sni  # type: ignore[assignment]
    with ThreadedServer(handlers.echo, ssl_context=context) as srv:
        with tls_connect(srv.address, ca.client_context()) as client:
            assert echo_once(client) == b"ping"
        (record,) = srv.wait_for_connections(1, closed=True)
    assert handshake_threads == [record.thread_name]
    assert record.thread_name is not None
    assert record.thread_name.startswith("netthreads[")
    assert record.tls is not None
    assert record.tls["sni"] == "localhost"


def test_pool_concurrency_serves_tls(ca: CertificateAuthority) -> None:
    with ThreadedServer(
        handlers.echo, ssl_context=ca.server_context(), concurrency="pool", max_workers=2
    ) as srv:
        clients = [tls_connect(srv.address, ca.client_context()) for _ in range(2)]
        try:
            for i, client in enumerate(clients):
                assert echo_once(client, b"n%d" % i) == b"n%d" % i
        finally:
            for client in clients:
                client.close()
        records = srv.wait_for_connections(2, closed=True)
    assert all(r.how_closed == "peer-eof" for r in records)


def test_unix_socket_server_over_tls(ca: CertificateAuthority) -> None:
    with (
        ThreadedServer(handlers.echo, unix=True, ssl_context=ca.server_context()) as srv,
        tls_connect(srv.address, ca.client_context()) as client,
    ):
        assert echo_once(client) == b"ping"


def test_stalled_handshake_times_out_and_is_recorded(ca: CertificateAuthority) -> None:
    srv = ThreadedServer(handlers.echo, ssl_context=ca.server_context(), tls_handshake_timeout=0.2)
    with srv, connect(srv.address):  # a TCP client that never starts the handshake
        (record,) = srv.wait_for_connections(1, closed=True, timeout=30)
    assert record.how_closed == "handshake-failed"
    assert record.error is not None
    assert "did not complete it within 0.2s" in record.error


@pytest.mark.parametrize(
    ("send", "reason"),
    [
        (b"", "closed the connection during the handshake"),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP_REQUEST"),
    ],
)
def test_non_tls_clients_are_handshake_failures(
    ca: CertificateAuthority, send: bytes, reason: str
) -> None:
    with ThreadedServer(handlers.echo, ssl_context=ca.server_context()) as srv:
        with connect(srv.address) as client:
            client.sendall(send)
            client.shutdown(socket.SHUT_WR)
            # The server gives up on the handshake and closes (with unread data: a reset).
            with contextlib.suppress(ConnectionResetError):
                while client.recv(1024):
                    pass
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.how_closed == "handshake-failed"
    assert record.error is not None
    assert reason in record.error


def test_handler_error_after_the_handshake_is_raised(ca: CertificateAuthority) -> None:
    def broken(conn: ServerConnection) -> None:
        conn.recv(4)
        raise RuntimeError("the handler broke after the handshake")

    srv = ThreadedServer(broken, ssl_context=ca.server_context())
    with (
        pytest.raises(HandlerError, match="the handler broke") as info,
        srv,
        tls_connect(srv.address, ca.client_context()) as client,
    ):
        client.sendall(b"ping")
        srv.wait_for_connections(1, closed=True)
    assert "raise RuntimeError" in str(info.value)  # the server-side traceback
    (record,) = srv.connections
    assert record.how_closed == "error"


def test_clients_vanishing_mid_stream_are_disconnects_not_errors(
    ca: CertificateAuthority,
) -> None:
    # Each client sends more than the echo can return before the client closes without a
    # TLS close_notify and without reading: the server's writes fail (SSLEOFError, EPIPE
    # or ECONNRESET). Those are the client's doing, not a handler bug.
    with ThreadedServer(handlers.echo, ssl_context=ca.server_context()) as srv:
        for _ in range(10):
            client = tls_connect(srv.address, ca.client_context())
            with client:
                client.sendall(b"x" * 300_000)
        records = srv.wait_for_connections(10, closed=True)
    assert {r.how_closed for r in records} <= {"peer-reset", "peer-eof"}
    assert srv.errors == []


def test_stop_is_bounded_with_clients_in_handshake_and_in_recv(
    ca: CertificateAuthority,
) -> None:
    srv = ThreadedServer(handlers.echo, ssl_context=ca.server_context(), stop_timeout=10)
    with srv:
        stalled = connect(srv.address)  # never starts its handshake
        idle = tls_connect(srv.address, ca.client_context())  # handler blocked in recv
        assert echo_once(idle) == b"ping"
        srv.wait_for_connections(2)
    try:
        # stop() returned without ServerStopTimeout or HandlerError: both were shut down.
        records = sorted(srv.connections, key=lambda r: r.index)
        assert [r.how_closed for r in records] == ["server-stop", "server-stop"]
        assert idle.recv(10) == b""  # the client sees the connection end
    finally:
        stalled.close()
        idle.close()


# -- real clients -------------------------------------------------------------------------


def test_asyncio_open_connection(ca: CertificateAuthority) -> None:
    async def round_trip(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("localhost", port, ssl=ca.client_context())
        writer.write(b"async ping")
        await writer.drain()
        data = await reader.readexactly(len(b"async ping"))
        writer.close()
        await writer.wait_closed()
        return data

    with ThreadedServer(handlers.echo, ssl_context=ca.server_context()) as srv:
        assert asyncio.run(asyncio.wait_for(round_trip(srv.port), 30)) == b"async ping"
        (record,) = srv.wait_for_connections(1, closed=True)
    assert record.tls is not None
    assert record.tls["sni"] == "localhost"


@pytest.fixture
def https_server(
    ca: CertificateAuthority,
) -> Iterator[tuple[ThreadedServer, handlers.HTTPResponder]]:
    responder = handlers.HTTPResponder(
        lambda request: handlers.HTTPResponse(200, b"hello " + request.path.encode())
    )
    with ThreadedServer(responder, ssl_context=ca.server_context(alpn=["http/1.1"])) as srv:
        yield srv, responder


def test_urllib3_over_tls(
    ca: CertificateAuthority, https_server: tuple[ThreadedServer, handlers.HTTPResponder]
) -> None:
    srv, responder = https_server
    with urllib3.PoolManager(ssl_context=ca.client_context(), timeout=30, retries=False) as pool:
        response = pool.request("GET", f"https://localhost:{srv.port}/u3")
        assert (response.status, response.data) == (200, b"hello /u3")
        response = pool.request("GET", f"https://localhost:{srv.port}/again")
        assert response.data == b"hello /again"
    assert [r.path for r in responder.requests] == ["/u3", "/again"]
    # Keep-alive: both requests on one TLS connection, with the ALPN urllib3 offers.
    (record,) = srv.connections
    assert record.tls is not None
    assert record.tls["alpn"] == "http/1.1"


def test_urllib3_refuses_an_expired_certificate(ca: CertificateAuthority) -> None:
    responder = handlers.HTTPResponder(b"never")
    with (
        ThreadedServer(responder, ssl_context=ca.server_context("expired")) as srv,
        urllib3.PoolManager(ssl_context=ca.client_context(), timeout=30, retries=False) as pool,
        pytest.raises(urllib3.exceptions.SSLError, match="certificate has expired"),
    ):
        pool.request("GET", f"https://localhost:{srv.port}/")
    assert responder.requests == []


def test_requests_with_a_ca_bundle_path(
    ca: CertificateAuthority, https_server: tuple[ThreadedServer, handlers.HTTPResponder]
) -> None:
    srv, _ = https_server
    with requests.Session() as session:
        response = session.get(
            f"https://localhost:{srv.port}/req", verify=ca.ca_bundle_path(), timeout=30
        )
        assert (response.status_code, response.content) == (200, b"hello /req")
        with pytest.raises(requests.exceptions.SSLError):
            session.get(f"https://localhost:{srv.port}/req", timeout=30)  # system CAs only


def test_httpx_with_a_client_context(
    ca: CertificateAuthority, https_server: tuple[ThreadedServer, handlers.HTTPResponder]
) -> None:
    srv, _ = https_server
    with httpx.Client(verify=ca.client_context(), timeout=30) as client:
        response = client.get(f"https://127.0.0.1:{srv.port}/hx")
        assert (response.status_code, response.content) == (200, b"hello /hx")
        assert response.http_version == "HTTP/1.1"


def test_httpx_mutual_tls(ca: CertificateAuthority) -> None:
    responder = handlers.HTTPResponder(b"secret")
    context = ca.server_context(client_certs="required")
    with ThreadedServer(responder, ssl_context=context) as srv:
        with httpx.Client(verify=ca.client_context(client_cert=True), timeout=30) as client:
            assert client.get(f"https://localhost:{srv.port}/").content == b"secret"
        with (
            httpx.Client(verify=ca.client_context(), timeout=30) as client,
            pytest.raises((httpx.ConnectError, httpx.ReadError, httpx.RemoteProtocolError)),
        ):
            client.get(f"https://localhost:{srv.port}/")
        records = sorted(srv.wait_for_connections(2, closed=True), key=lambda r: r.index)
    assert [r.how_closed for r in records] == ["peer-eof", "handshake-failed"]
    assert len(responder.requests) == 1


def test_self_signed_preset_names_the_same_identities_as_valid() -> None:
    # Internationalized names, wildcards, networks and e-mail addresses: the forms trustme
    # takes, written the same way (IDNA 2008 A-labels) in both certificates.
    identities = ["straße.test", "*.wild.test", "10.0.0.0/8", "me@example.test"]
    with CertificateAuthority(identities=identities) as custom:
        sans = []
        for preset in ("valid", "self-signed"):
            cert, _ = custom.server_cert_files(preset)  # type: ignore[arg-type]
            with open(cert, "rb") as f:
                leaf = x509.load_pem_x509_certificate(f.read())
            sans.append(leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName))
    assert sans[0].value == sans[1].value
    assert "xn--strae-oqa.test" in sans[0].value.get_values_for_type(x509.DNSName)
