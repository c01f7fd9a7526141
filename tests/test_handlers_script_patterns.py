"""Script's Expect with a regex: a real client (smtplib) words its commands its own way."""

from __future__ import annotations

import contextlib
import re
import smtplib
import socket
from collections.abc import Iterator

import pytest

from pytest_netthreads import HandlerError, ThreadedServer
from pytest_netthreads._runtime.reactor import get_reactor
from pytest_netthreads.handlers import CloseStep, Expect, Script, ScriptMismatch, Send
from pytest_netthreads.tls import CertificateAuthority
from tests._util import connect, recv_exactly

pytestmark = pytest.mark.usefixtures("_reactor_running", "no_thread_or_fd_leak")


@pytest.fixture(scope="module")
def _reactor_running() -> None:
    get_reactor().start()


def _smtp_dialog() -> Script:
    # smtplib sends "ehlo <its host name>" and "mail FROM:" (3.13: "mail from:"): patterns.
    return Script(
        Send(b"220 test ESMTP\r\n"),
        Expect(re.compile(rb"ehlo \S+\r\n", re.IGNORECASE)),
        Send(b"250 test\r\n"),
        Expect(re.compile(rb"mail from:<alice@example\.org>\r\n", re.IGNORECASE)),
        Send(b"250 ok\r\n"),
        Expect(re.compile(rb"rcpt to:<bob@example\.org>\r\n", re.IGNORECASE)),
        Send(b"250 ok\r\n"),
        Expect(b"data\r\n"),
        Send(b"354 go on\r\n"),
        Expect(re.compile(rb"Subject: hi\r\n\r\nhello bob\r\n\.\r\n"), until=b"\r\n.\r\n"),
        Send(b"250 queued\r\n"),
        Expect(re.compile(rb"quit\r\n", re.IGNORECASE)),
        Send(b"221 bye\r\n"),
    )


@pytest.fixture
def smtp() -> Iterator[ThreadedServer]:
    with ThreadedServer(_smtp_dialog()) as server:
        yield server


def test_smtplib_sends_a_message_through_a_scripted_dialog(smtp: ThreadedServer) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        refused = client.sendmail(
            "alice@example.org", ["bob@example.org"], "Subject: hi\r\n\r\nhello bob\r\n"
        )
    assert refused == {}
    smtp.wait_for_connections(1, closed=True)
    smtp.check()


def test_a_client_that_does_not_match_gets_a_mismatch_naming_the_pattern(
    smtp: ThreadedServer,
) -> None:
    with smtplib.SMTP(smtp.host, smtp.port, timeout=10) as client:
        client.ehlo()
        with pytest.raises(smtplib.SMTPServerDisconnected):
            client.mail("mallory@example.org")
    smtp.wait_for_connections(1, closed=True)
    with pytest.raises(HandlerError) as info:
        smtp.check()
    (error,) = info.value.exceptions
    assert isinstance(error, ScriptMismatch)
    # smtplib sends "mail FROM:" before 3.13 and "mail from:" since.
    assert str(error).lower() == (
        "script step 3 (expect): expected a match of re.compile(b'mail from:<alice@example\\\\"
        ".org>\\\\r\\\\n', re.ignorecase), got b'mail from:<mallory@example.org>\\r\\n'"
    )


def test_a_pattern_reads_its_frame_only_and_leaves_the_rest_to_the_next_step() -> None:
    script = Script(
        Expect(re.compile(rb"HELO \w+\r\n")), Send(b"250\r\n"), Expect(b"QUIT\r\n"), CloseStep()
    )
    with ThreadedServer(script) as srv:
        with connect(srv.address) as sock:
            # The first command's end and the next command in one send.
            sock.sendall(b"HELO abc\r")
            sock.sendall(b"\nQUIT\r\n")
            assert recv_exactly(sock, 5) == b"250\r\n"
            assert sock.recv(1) == b""  # QUIT matched: the script ran to its end
        srv.wait_for_connections(1, closed=True)
        srv.check()


@pytest.mark.parametrize(
    ("sent", "ending"),
    [
        (b"HELO " + b"a" * 40, "(no b'\\n' in 32 bytes)"),
        (b"HELO ab", "(then the client closed)"),
    ],
)
def test_a_frame_too_long_or_cut_short_is_a_mismatch(sent: bytes, ending: str) -> None:
    script = Script(Expect(re.compile(rb"HELO \w+\r\n"), max_bytes=32), Send(b"250\r\n"))
    srv = ThreadedServer(script).start()
    try:
        with connect(srv.address) as sock:
            sock.sendall(sent)
            # The server may close (with our bytes unread: a reset) before we are done.
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
                assert sock.recv(10) == b""
        srv.wait_for_connections(1, closed=True)
    finally:
        with pytest.raises(HandlerError) as info:
            srv.stop()
    (error,) = info.value.exceptions
    assert isinstance(error, ScriptMismatch)
    assert str(error).endswith(ending), str(error)
    assert len(str(error)) < 200


def test_a_tls_connection_reads_a_pattern_too() -> None:
    script = Script(Expect(re.compile(rb"hi \d+\n")), Send(b"ok\n"), Expect(b"bye\n"))
    with CertificateAuthority() as ca, ThreadedServer(
        script, ssl_context=ca.server_context()
    ) as srv:
        with socket.create_connection(srv.address, timeout=10) as raw, ca.client_context(
        ).wrap_socket(raw, server_hostname="localhost") as sock:
            sock.sendall(b"hi 42\nbye\n")
            assert recv_exactly(sock, 3) == b"ok\n"
        srv.wait_for_connections(1, closed=True)
        srv.check()


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: Expect(re.compile("HELO")), TypeError, "got the str pattern"),
        (lambda: Expect(re.compile(rb".*")), ValueError, "must not match empty input"),
        (lambda: Expect(re.compile(rb"x"), until=b""), ValueError, "Expect(until) must be non-"),
        (lambda: Expect(re.compile(rb"x"), until="\n"), TypeError, "Expect(until) must be bytes"),
        (lambda: Expect(re.compile(rb"x"), max_bytes=0), ValueError, "Expect(max_bytes) must be"),
        (lambda: Expect(re.compile(rb"x"), max_bytes=1.5), TypeError, "Expect(max_bytes) must"),
        (lambda: Expect(re.compile(rb"x"), max_bytes=True), TypeError, "Expect(max_bytes) must"),
        (lambda: Expect(b"x", until=b"\n"), ValueError, "Expect(until) applies to a pattern"),
        (lambda: Expect(b"x", max_bytes=5), ValueError, "Expect(max_bytes) applies to a pat"),
        (lambda: Expect(5), TypeError, "pattern (re.compile(rb'...')), got int"),
        (lambda: Expect("HELO"), TypeError, "Expect(data) must be bytes or a bytes pattern"),
    ],
)
def test_bad_expect_arguments_fail_at_construction(
    make: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        make()  # type: ignore[operator]


def test_a_pattern_step_keeps_its_defaults() -> None:
    step = Expect(re.compile(rb"x\n"))
    assert (step.until, step.max_bytes) == (b"\n", 65536)
    assert Expect(b"x").until is None
