"""A certificate authority for tests and :class:`ssl.SSLContext` presets, on trustme.

Usable without pytest::

    from pytest_netthreads import ThreadedServer, handlers
    from pytest_netthreads.tls import CertificateAuthority

    with CertificateAuthority() as ca, ThreadedServer(
        handlers.echo, ssl_context=ca.server_context()
    ) as srv:
        client = ca.client_context()  # trusts the CA; verifies "localhost" and "127.0.0.1"

The CA is a root with one intermediate (as real deployments have): server certificates are
issued by the intermediate and served with it, clients trust only the root. Keys are ECDSA
P-256: generating one costs ~0.1 ms where RSA-2048 costs ~40 ms.

Negative presets (``server_context(preset=...)``) each make a verifying client fail with the
certificate-verification error a user would expect; :data:`VERIFY_CODES` says which.

Key material stays in memory. It is written to disk only when a path is asked for
(:meth:`CertificateAuthority.ca_bundle_path` and friends): into a private directory, each
file mode 0600, all removed by :meth:`CertificateAuthority.close`.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import ssl
import tempfile
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, Union, get_args

import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from .servers._tls import record_sni

if TYPE_CHECKING:
    from typing_extensions import Self

Preset = Literal[
    "valid",
    "expired",
    "not-yet-valid",
    "wrong-host",
    "untrusted",
    "self-signed",
    "missing-intermediate",
]
"""The server certificate presets of :meth:`CertificateAuthority.server_context`.

``valid``: issued by the CA's intermediate for the CA's identities, served with the
intermediate. ``expired``: expired yesterday. ``not-yet-valid``: valid from tomorrow.
``wrong-host``: valid, but only for ``wrong-host.invalid``. ``untrusted``: issued by another
CA, one the client does not trust. ``self-signed``: a self-signed leaf certificate.
``missing-intermediate``: the ``valid`` certificate served without its intermediate.
"""

PRESETS: tuple[Preset, ...] = get_args(Preset)

VERIFY_CODES: Mapping[Preset, frozenset[int]] = {
    # OpenSSL X509_V_ERR_* numbers, as found in ssl.SSLCertVerificationError.verify_code.
    "expired": frozenset({10}),  # certificate has expired
    "not-yet-valid": frozenset({9}),  # certificate is not yet valid
    "wrong-host": frozenset({62, 64}),  # Hostname mismatch / IP address mismatch
    "untrusted": frozenset({20}),  # unable to get local issuer certificate
    "self-signed": frozenset({18}),  # self-signed certificate
    "missing-intermediate": frozenset({20}),  # unable to get local issuer certificate
}
"""For each negative preset, the ``verify_code`` a verifying client's
:class:`ssl.SSLCertVerificationError` carries (its ``verify_message`` says it in words)."""

ClientCerts = Literal["none", "optional", "required"]
"""Whether a server asks clients for a certificate: ``"required"`` refuses clients without
one signed by the CA; ``"optional"`` asks, accepts clients without one, and refuses ones
whose certificate does not verify."""

TLSVersionLike = Union[ssl.TLSVersion, str]  # noqa: UP007 (a runtime alias on 3.10)
"""An :class:`ssl.TLSVersion`, or ``"1.2"`` / ``"1.3"`` (also ``"TLSv1.2"`` / ``"TLSv1.3"``)."""

DEFAULT_IDENTITIES = ("localhost", "127.0.0.1", "::1")
CLIENT_IDENTITY = "client.netthreads.test"
WRONG_HOST = "wrong-host.invalid"

_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
    "tlsv1.2": ssl.TLSVersion.TLSv1_2,
    "tlsv1.3": ssl.TLSVersion.TLSv1_3,
}
_CLIENT_CERTS = ("none", "optional", "required")


class CertFiles(NamedTuple):
    """Paths of a certificate chain and its key on disk (mode 0600): ``cert, key = ...``.

    ``cert`` is the PEM certificate chain, leaf first (what ``load_cert_chain``, nginx's
    ``ssl_certificate`` or ``redis-server --tls-cert-file`` take); ``key`` the PEM private
    key, unencrypted.
    """

    cert: str
    key: str


@dataclass(frozen=True)
class _KeyAndChain:
    """A private key and its certificate chain (leaf first), PEM, in memory."""

    key_pem: bytes
    chain_pems: tuple[bytes, ...]

    @classmethod
    def from_leaf(cls, leaf: trustme.LeafCert) -> _KeyAndChain:
        return cls(leaf.private_key_pem.bytes(), tuple(b.bytes() for b in leaf.cert_chain_pems))

    def without_intermediates(self) -> _KeyAndChain:
        return _KeyAndChain(self.key_pem, self.chain_pems[:1])

    def load_into(self, context: ssl.SSLContext) -> None:
        _load_cert_chain(context, self.key_pem + b"".join(self.chain_pems))


def _load_cert_chain(context: ssl.SSLContext, pem: bytes) -> None:
    # ssl can load a certificate chain only from a file (https://bugs.python.org/issue16487).
    # On Linux an anonymous in-memory file keeps the key off the disk; elsewhere a 0600
    # temporary file lives for the duration of the call.
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        fd = memfd_create("netthreads-tls", getattr(os, "MFD_CLOEXEC", 0))
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    fd, path = tempfile.mkstemp(suffix=".pem")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)


def _general_name(identity: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(identity))
    except ValueError:
        return x509.DNSName(identity.encode("idna").decode("ascii"))


def _self_signed(identities: Sequence[str]) -> _KeyAndChain:
    """A self-signed leaf (not a CA) for ``identities``: trusted by nobody."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pytest-netthreads"),
            x509.NameAttribute(NameOID.COMMON_NAME, "self-signed test certificate"),
        ]
    )
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.SubjectAlternativeName([_general_name(i) for i in identities]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return _KeyAndChain(key_pem, (cert.public_bytes(serialization.Encoding.PEM),))


def _tls_version(value: TLSVersionLike | None, name: str) -> ssl.TLSVersion | None:
    if value is None or isinstance(value, ssl.TLSVersion):
        return value
    if isinstance(value, str) and value.lower() in _VERSIONS:
        return _VERSIONS[value.lower()]
    raise ValueError(
        f"{name} must be an ssl.TLSVersion or one of '1.2', '1.3' (or 'TLSv1.2', 'TLSv1.3'), "
        f"got {value!r}"
    )


def _alpn(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"alpn must be a sequence of protocol names such as ['h2', 'http/1.1'], got {value!r}"
        )
    for item in value:
        if not isinstance(item, str) or not item or len(item.encode()) > 255:
            raise ValueError(
                f"alpn entries must be non-empty str of at most 255 bytes, got {item!r}"
            )
    return tuple(value)


def _apply_options(
    context: ssl.SSLContext,
    minimum_version: ssl.TLSVersion | None,
    maximum_version: ssl.TLSVersion | None,
    alpn: tuple[str, ...] | None,
    keylog_file: str | None,
) -> None:
    if minimum_version is not None:
        context.minimum_version = minimum_version
    if maximum_version is not None:
        context.maximum_version = maximum_version
    if alpn is not None:
        context.set_alpn_protocols(list(alpn))
    if keylog_file is not None:
        context.keylog_filename = keylog_file


class CertificateAuthority:
    """A test certificate authority: a trustme root CA with one intermediate.

    Thread-safe; create one per test session (the ``tls_ca`` fixture does). Server contexts
    are cached: building one costs about a millisecond, so each distinct set of arguments is
    built once and the same :class:`ssl.SSLContext` returned after that. Do not change a
    context :meth:`server_context` returned; ask for what you need through its arguments.

    Args:
        identities: the host names and IP addresses server certificates are valid for.
        keylog_file: a path to append TLS session secrets to (NSS key log format, what
            Wireshark reads), for every context this CA makes. Opt-in; never set by default.
        organization: the organization name written in the certificates.
    """

    def __init__(
        self,
        *,
        identities: Sequence[str] = DEFAULT_IDENTITIES,
        keylog_file: str | os.PathLike[str] | None = None,
        organization: str = "pytest-netthreads",
    ) -> None:
        if isinstance(identities, str) or not isinstance(identities, Sequence):
            raise TypeError(
                f"identities must be a sequence of host names or IP addresses, got {identities!r}"
            )
        if not identities or not all(isinstance(i, str) and i for i in identities):
            raise ValueError(
                f"identities must be non-empty host names or IP addresses, got {identities!r}"
            )
        if keylog_file is not None and not isinstance(keylog_file, (str, os.PathLike)):
            raise TypeError(f"keylog_file must be a path or None, got {keylog_file!r}")
        if not isinstance(organization, str) or not organization:
            raise TypeError(f"organization must be a non-empty str, got {organization!r}")
        self.identities: tuple[str, ...] = tuple(identities)
        self.keylog_file: str | None = (
            None if keylog_file is None else os.path.abspath(os.fspath(keylog_file))
        )
        self.organization = organization
        self.root = trustme.CA(organization_name=organization)
        # Leaves come from an intermediate so that clients exercise chain building (and the
        # "missing-intermediate" preset has something to leave out). trustme >= 1.2 gives
        # child CAs an Authority Key Identifier, which Python 3.13's VERIFY_X509_STRICT
        # requires: https://github.com/python-trio/trustme/pull/642
        self.intermediate = self.root.create_child_ca()
        self._lock = threading.Lock()
        self._identities: dict[str, _KeyAndChain] = {}
        self._server_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
        self._rogue: trustme.CA | None = None
        self._files_dir: str | None = None
        self._files: dict[str, str] = {}
        self._finalizer: weakref.finalize[Any, CertificateAuthority] | None = None
        self._closed = False

    # -- certificates -------------------------------------------------------------------

    @property
    def cert_pem(self) -> bytes:
        """The root certificate (PEM): what a client must trust."""
        return self.root.cert_pem.bytes()

    def issue_cert(
        self,
        *identities: str,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
    ) -> trustme.LeafCert:
        """Issue a certificate from the intermediate (for servers or clients).

        Args:
            identities: host names, IP addresses or e-mail addresses it is valid for.
            not_before: start of validity (default: long ago).
            not_after: end of validity (default: far in the future).
        """
        return self.intermediate.issue_cert(
            *identities,
            not_before=not_before,
            not_after=not_after,
            organization_name=self.organization,
        )

    def _identity(self, name: str) -> _KeyAndChain:
        """The key and chain of a preset (or of ``"client"``), made on first use."""
        if name == "missing-intermediate":
            return self._identity("valid").without_intermediates()
        with self._lock:
            found = self._identities.get(name)
            if found is None:
                found = self._identities[name] = self._make_identity(name)
            return found

    def _make_identity(self, preset: str) -> _KeyAndChain:
        now = datetime.datetime.now(datetime.timezone.utc)
        day = datetime.timedelta(days=1)
        if preset == "valid":
            return _KeyAndChain.from_leaf(self.issue_cert(*self.identities))
        if preset == "expired":
            leaf = self.issue_cert(*self.identities, not_before=now - 30 * day, not_after=now - day)
        elif preset == "not-yet-valid":
            leaf = self.issue_cert(*self.identities, not_before=now + day, not_after=now + 30 * day)
        elif preset == "wrong-host":
            leaf = self.issue_cert(WRONG_HOST)
        elif preset == "untrusted":
            leaf = self._rogue_ca().issue_cert(*self.identities)
        elif preset == "self-signed":
            return _self_signed(self.identities)
        elif preset == "client":
            leaf = self.issue_cert(CLIENT_IDENTITY)
        elif preset == "untrusted-client":
            leaf = self._rogue_ca().issue_cert(CLIENT_IDENTITY)
        else:  # pragma: no cover - callers validate
            raise AssertionError(preset)
        return _KeyAndChain.from_leaf(leaf)

    def _rogue_ca(self) -> trustme.CA:
        """Another CA, trusted by nobody (called with the lock held)."""
        if self._rogue is None:
            self._rogue = trustme.CA(organization_name="not the CA you trust")
        return self._rogue

    # -- contexts -----------------------------------------------------------------------

    def server_context(
        self,
        preset: Preset = "valid",
        *,
        client_certs: ClientCerts = "none",
        minimum_version: TLSVersionLike | None = None,
        maximum_version: TLSVersionLike | None = None,
        alpn: Sequence[str] | None = None,
    ) -> ssl.SSLContext:
        """A server :class:`ssl.SSLContext` (cached: the same arguments give the same one).

        Args:
            preset: which certificate the server presents; see :data:`Preset`.
            client_certs: mutual TLS: ``"required"`` or ``"optional"``; see
                :data:`ClientCerts`. Client certificates must chain to this CA.
            minimum_version: the lowest TLS version accepted, e.g. ``"1.3"``.
            maximum_version: the highest TLS version offered, e.g. ``"1.2"``.
            alpn: ALPN protocols the server selects from, in order of preference.
        """
        # Fast path (a fixture asks for the same context in every test): a cache hit means
        # these arguments were validated before.
        raw_key = (preset, client_certs, minimum_version, maximum_version, alpn)
        try:
            return self._server_contexts[raw_key]
        except (KeyError, TypeError):  # TypeError: unhashable arguments (a list of ALPNs)
            pass
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        if client_certs not in _CLIENT_CERTS:
            raise ValueError(f"client_certs must be one of {_CLIENT_CERTS}, got {client_certs!r}")
        low = _tls_version(minimum_version, "minimum_version")
        high = _tls_version(maximum_version, "maximum_version")
        protocols = _alpn(alpn)
        key = (preset, client_certs, low, high, protocols)
        with self._lock:
            cached = self._server_contexts.get(key)
        if cached is not None:
            return cached
        self._check_open()
        identity = self._identity(preset)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        identity.load_into(context)
        if client_certs != "none":
            context.verify_mode = (
                ssl.CERT_REQUIRED if client_certs == "required" else ssl.CERT_OPTIONAL
            )
            self.root.configure_trust(context)
            # Check client certificates as strictly as Python 3.13 clients check servers.
            context.verify_flags |= ssl.VERIFY_X509_STRICT
        _apply_options(context, low, high, protocols, self.keylog_file)
        context.sni_callback = record_sni
        with self._lock:
            # Two threads may have built one at once; keep the first so callers share it.
            context = self._server_contexts.setdefault(key, context)
            try:
                self._server_contexts[raw_key] = context
            except TypeError:
                pass
            return context

    def client_context(
        self,
        *,
        client_cert: bool | Literal["untrusted"] = False,
        minimum_version: TLSVersionLike | None = None,
        maximum_version: TLSVersionLike | None = None,
        alpn: Sequence[str] | None = None,
    ) -> ssl.SSLContext:
        """A new client :class:`ssl.SSLContext` that trusts this CA (and nothing else).

        Built like :func:`ssl.create_default_context` (so on Python 3.13 it verifies with
        ``VERIFY_X509_STRICT``): certificates and host names are checked.

        Args:
            client_cert: ``True`` to present a client certificate issued by this CA (for
                mutual TLS); ``"untrusted"`` to present one from a CA the server does not
                trust.
            minimum_version: the lowest TLS version accepted, e.g. ``"1.3"``.
            maximum_version: the highest TLS version offered, e.g. ``"1.2"``.
            alpn: ALPN protocols to offer.
        """
        if client_cert not in (True, False, "untrusted"):
            raise ValueError(f"client_cert must be True, False or 'untrusted', got {client_cert!r}")
        low = _tls_version(minimum_version, "minimum_version")
        high = _tls_version(maximum_version, "maximum_version")
        protocols = _alpn(alpn)
        self._check_open()
        context = ssl.create_default_context(cadata=self.cert_pem.decode("ascii"))
        if client_cert is not False:
            which = "client" if client_cert is True else "untrusted-client"
            self._identity(which).load_into(context)
        _apply_options(context, low, high, protocols, self.keylog_file)
        return context

    # -- files --------------------------------------------------------------------------

    def ca_bundle_path(self) -> str:
        """Path of a PEM file holding the root certificate, for tools that want a file
        (``requests.get(url, verify=path)``, ``curl --cacert``, ``SSL_CERT_FILE``)."""
        return self._write("ca.pem", self.cert_pem)

    def server_cert_files(self, preset: Preset = "valid") -> CertFiles:
        """The certificate chain and key of a server preset, as files (e.g. for a real
        server such as ``redis-server --tls-port``)."""
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {PRESETS}, got {preset!r}")
        identity = self._identity(preset)
        return CertFiles(
            cert=self._write(f"{preset}.crt", b"".join(identity.chain_pems)),
            key=self._write(f"{preset}.key", identity.key_pem),
        )

    def client_cert_files(self) -> CertFiles:
        """The client certificate chain (issued by this CA) and its key, as files."""
        identity = self._identity("client")
        return CertFiles(
            cert=self._write("client.crt", b"".join(identity.chain_pems)),
            key=self._write("client.key", identity.key_pem),
        )

    def _write(self, name: str, data: bytes) -> str:
        self._check_open()
        with self._lock:
            path = self._files.get(name)
            if path is not None:
                return path
            if self._files_dir is None:
                self._files_dir = tempfile.mkdtemp(prefix="netthreads-tls-")  # mode 0700
                # A safety net for a CA that is never closed: runs at garbage collection or
                # interpreter exit, whichever is first.
                self._finalizer = weakref.finalize(
                    self, shutil.rmtree, self._files_dir, ignore_errors=True
                )
            path = os.path.join(self._files_dir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            self._files[name] = path
            return path

    # -- lifecycle ----------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this CertificateAuthority was closed")

    @property
    def files_dir(self) -> str | None:
        """The private directory files were written to, ``None`` until one was asked for."""
        return self._files_dir

    def close(self) -> None:
        """Remove every file written for this CA. Calling it again does nothing."""
        with self._lock:
            self._closed = True
            self._server_contexts.clear()
            finalizer, self._finalizer = self._finalizer, None
            self._files.clear()
            self._files_dir = None
        if finalizer is not None:
            finalizer()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<CertificateAuthority {state} identities={list(self.identities)}>"


__all__ = [
    "PRESETS",
    "VERIFY_CODES",
    "CertFiles",
    "CertificateAuthority",
    "ClientCerts",
    "Preset",
    "TLSVersionLike",
    "record_sni",
]
