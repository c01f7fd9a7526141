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
file mode 0600, all removed by :meth:`CertificateAuthority.close`. A process that dies
without closing its CA (SIGKILL, ``os._exit``) leaves its directory behind; the first CA made
in a later process of the same user removes it: the directory holds a lock file its process
keeps locked while it lives.
"""

from __future__ import annotations

import datetime
import os
import ssl
import sys
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

from ._runtime.private_files import OwnedDirectory, ensure_private_file, remove_stale_directories
from .servers.tls_accept import record_sni

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
_FILES_PREFIX = "netthreads-tls-"  # + "<pid>-<random>": see _private_files.OwnedDirectory
_stale_files_checked = False  # the first CA of a process removes dead processes' files


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


def _self_signed(names: x509.SubjectAlternativeName) -> _KeyAndChain:
    """A self-signed leaf (not a CA) for ``names``: trusted by nobody."""
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
        .add_extension(names, critical=False)
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
    raise (ValueError if isinstance(value, str) else TypeError)(
        f"{name} must be an ssl.TLSVersion or one of '1.2', '1.3' (or 'TLSv1.2', 'TLSv1.3'), "
        f"got {value!r}"
    )


def _tls_versions(
    minimum: TLSVersionLike | None, maximum: TLSVersionLike | None
) -> tuple[ssl.TLSVersion | None, ssl.TLSVersion | None]:
    low = _tls_version(minimum, "minimum_version")
    high = _tls_version(maximum, "maximum_version")
    # MINIMUM_SUPPORTED (-2) and MAXIMUM_SUPPORTED (-1) are placeholders, not versions.
    if low is not None and high is not None and 0 < high < low:
        raise ValueError(
            f"minimum_version must not be above maximum_version, got {minimum!r} > {maximum!r} "
            "(no version would be left to agree on)"
        )
    return low, high


def _alpn(value: Sequence[str] | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(
            f"alpn must be a sequence of protocol names such as ['h2', 'http/1.1'], got {value!r}"
        )
    for item in value:
        if not isinstance(item, str) or not item or len(item.encode()) > 255:
            raise (ValueError if isinstance(item, str) else TypeError)(
                f"alpn entries must be non-empty str of at most 255 bytes, got {item!r}"
            )
    return tuple(value)


def _preset(value: object, name: str = "preset") -> Preset:
    if value in PRESETS and isinstance(value, str):
        return value
    raise (ValueError if isinstance(value, str) else TypeError)(
        f"{name} must be one of {PRESETS}, got {value!r}"
    )


def _keylog_path(value: object) -> str | None:
    """The absolute path of a ``keylog_file`` argument, the file created (or checked) 0600."""
    if value is None:
        return None
    path = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise TypeError(
            f"keylog_file must be a path (a str or os.PathLike of str) or None, got {value!r}"
        )
    if not path:
        raise ValueError("keylog_file must be a non-empty path, got ''")
    path = os.path.abspath(path)
    ensure_private_file(path, "keylog_file")
    return path


def _env_keylog_file() -> str | None:
    """The key log file :func:`ssl.create_default_context` will open, as it decides it."""
    if sys.flags.ignore_environment:
        return None
    return os.environ.get("SSLKEYLOGFILE") or None


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
        # ssl opens the file itself, with the process umask (0644 under the usual 022): make
        # it 0600 first, again for each context, in case it was removed meanwhile.
        ensure_private_file(keylog_file, "keylog_file")
        context.keylog_filename = keylog_file


class CertificateAuthority:
    """A test certificate authority: a trustme root CA with one intermediate.

    Thread-safe; create one per test session (the ``tls_ca`` fixture does). Server contexts
    are cached: building one costs about a millisecond, so each distinct set of arguments is
    built once and the same :class:`ssl.SSLContext` returned after that. Do not change a
    context :meth:`server_context` returned; ask for what you need through its arguments.

    The first CA made in a process removes the files directories that dead processes of the
    same user left behind (their private keys); a live process's directory is never touched.

    Args:
        identities: the host names and IP addresses server certificates are valid for
            (e-mail addresses and IP networks are taken too, as :meth:`issue_cert` does).
        keylog_file: a path to append TLS session secrets to (NSS key log format, what
            Wireshark reads), for every context this CA makes. Opt-in; never set by default.
            Created mode 0600 at once; an existing file must be a regular file of this user
            (not a symbolic link), and loses any group and other permissions. Client
            contexts also follow the ``SSLKEYLOGFILE`` environment variable, as
            :func:`ssl.create_default_context` does (that file is made private the same
            way); ``keylog_file`` takes precedence.
        organization: the organization name written in the certificates.

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: an argument of the right type but unusable, among them a host name
            that is not one, or a ``keylog_file`` that cannot be opened for appending.
    """

    def __init__(
        self,
        *,
        identities: Sequence[str] = DEFAULT_IDENTITIES,
        keylog_file: str | os.PathLike[str] | None = None,
        organization: str = "pytest-netthreads",
    ) -> None:
        if isinstance(identities, (str, bytes, bytearray)) or not isinstance(identities, Sequence):
            raise TypeError(
                f"identities must be a sequence of host names or IP addresses, got {identities!r}"
            )
        _check_identities(identities)
        if not isinstance(organization, str):
            raise TypeError(f"organization must be a non-empty str, got {organization!r}")
        if not organization:
            raise ValueError(f"organization must be a non-empty str, got {organization!r}")
        self.identities: tuple[str, ...] = tuple(identities)
        self.keylog_file: str | None = _keylog_path(keylog_file)
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
        # The same contexts under the arguments as given, when they are of the exact types
        # of a validated call (str or None): a hit proves the arguments were checked.
        self._given_contexts: dict[tuple[object, ...], ssl.SSLContext] = {}
        self._rogue: trustme.CA | None = None
        self._files_dir: str | None = None
        self._files: dict[str, str] = {}
        self._finalizer: weakref.finalize[Any, CertificateAuthority] | None = None
        self._closed = False
        # The "valid" certificate now rather than at the first server_context() call: a
        # host name that is not one fails here, at the call site.
        self._identities["valid"] = _KeyAndChain.from_leaf(self.issue_cert(*self.identities))
        _remove_stale_files_once()

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
            not_before: start of validity (default: long ago). A naive datetime is UTC.
            not_after: end of validity (default: far in the future).
        """
        _check_identities(identities)
        for name, value in (("not_before", not_before), ("not_after", not_after)):
            if value is not None and not isinstance(value, datetime.datetime):
                raise TypeError(f"{name} must be a datetime.datetime or None, got {value!r}")
        if not_before is not None and not_after is not None and _utc(not_after) <= _utc(not_before):
            raise ValueError(
                f"not_after must be later than not_before, got not_before={not_before!r}, "
                f"not_after={not_after!r}"
            )
        try:
            return self.intermediate.issue_cert(
                *identities,
                not_before=not_before,
                not_after=not_after,
                organization_name=self.organization,
            )
        except UnicodeError as exc:  # idna's errors: a label too long, a space, ...
            raise ValueError(
                f"identities must be host names, IP addresses or e-mail addresses, got "
                f"{identities!r}: {exc}"
            ) from None

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
            # The names of the "valid" certificate, as trustme wrote them (A-labels, IPs).
            valid = x509.load_pem_x509_certificate(self._identities["valid"].chain_pems[0])
            names = valid.extensions.get_extension_for_class(x509.SubjectAlternativeName)
            return _self_signed(names.value)
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
        given = (preset, client_certs, minimum_version, maximum_version, alpn)
        try:
            return self._given_contexts[given]
        except (KeyError, TypeError):  # TypeError: unhashable arguments (a list of ALPNs)
            pass
        preset = _preset(preset)
        if client_certs not in _CLIENT_CERTS or not isinstance(client_certs, str):
            raise (ValueError if isinstance(client_certs, str) else TypeError)(
                f"client_certs must be one of {_CLIENT_CERTS}, got {client_certs!r}"
            )
        low, high = _tls_versions(minimum_version, maximum_version)
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
            # Only arguments of exactly these types go to the fast path: an int equal to an
            # ssl.TLSVersion (771) or 1 for True must not find a context validation refuses.
            if all(type(v) is str or v is None for v in given[:4]) and (
                alpn is None or (type(alpn) is tuple and all(type(p) is str for p in alpn))
            ):
                self._given_contexts[given] = context
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
        # Identity checks: 1 == True and 0 == False, yet 1 is not a choice of certificate.
        if not (client_cert is True or client_cert is False or client_cert == "untrusted"):
            raise (ValueError if isinstance(client_cert, str) else TypeError)(
                f"client_cert must be True, False or 'untrusted', got {client_cert!r}"
            )
        low, high = _tls_versions(minimum_version, maximum_version)
        protocols = _alpn(alpn)
        self._check_open()
        env_keylog = _env_keylog_file()
        if env_keylog is not None:
            # create_default_context opens it (creating it with the process umask).
            ensure_private_file(env_keylog, "the SSLKEYLOGFILE environment variable")
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
        identity = self._identity(_preset(preset))
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
                directory = OwnedDirectory(_FILES_PREFIX)  # mode 0700, its lock held
                self._files_dir = directory.path
                # A safety net for a CA that is never closed: runs at garbage collection or
                # interpreter exit, whichever is first. (A process killed before either
                # leaves the directory to the next process's _remove_stale_files_once.)
                self._finalizer = weakref.finalize(self, directory.remove)
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
            self._given_contexts.clear()
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


def _check_identities(identities: Sequence[object]) -> None:
    if not identities:
        raise ValueError("identities must be non-empty host names or IP addresses, got none")
    for identity in identities:
        if not isinstance(identity, str):
            raise TypeError(
                f"identities must be host names or IP addresses (str), got {identity!r} "
                f"in {identities!r}"
            )
        if not identity:
            raise ValueError(
                f"identities must be non-empty host names or IP addresses, got {identities!r}"
            )


def _utc(moment: datetime.datetime) -> datetime.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=datetime.timezone.utc)


def _remove_stale_files_once() -> None:
    """Remove the files directories of CAs whose process died without closing them (killed
    by SIGKILL, ended by ``os._exit``), once per process: at the first CA made."""
    global _stale_files_checked
    if not _stale_files_checked:
        _stale_files_checked = True
        remove_stale_directories(_FILES_PREFIX)


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
