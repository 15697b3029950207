"""TLS for the socket channel: configuration, SSL contexts, the time-limited handshake,
readable TLS errors, and throw-away certificates.

:class:`TLSConfig` describes one end (server or client) and builds the matching
:class:`ssl.SSLContext`: TLS 1.2 at least (1.3 whenever both ends have it), forward-secret
AEAD ciphers only, and verification on by default. A client without ``cafile`` checks the
server against the system trust store; switching verification off takes ``insecure=True``.
A server with ``require_client_cert`` accepts only clients whose certificate chains to
``cafile`` (mutual TLS); asking for it without ``cafile`` and ``certfile`` is an error at
construction, never a silent downgrade. A server issues no session tickets (TLS 1.2/1.3).

:func:`make_self_signed`, :func:`make_ca` and :func:`make_certificate` write short-lived
EC P-256 certificates for tests and local deployments, so nobody has to drive ``openssl``.

:func:`tls_handshake` wraps a connected socket and runs the handshake under one deadline,
turning every failure into a :class:`~safenet.channel.base.TLSError` whose message
:func:`describe_tls_error` makes readable (no OpenSSL source locations).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from safenet.channel.base import TLSError

StrPath = str | os.PathLike[str]

# TLS 1.2 suites with ephemeral ECDH and an AEAD; TLS 1.3 suites are all fine and unaffected.
_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
DEFAULT_HANDSHAKE_TIMEOUT = 10.0

#: what an SSL socket raises when the peer closed the connection
TLS_CLOSED = (ssl.SSLEOFError, ssl.SSLZeroReturnError)
# OpenSSL reasons worth translating: what they usually mean for safenet's two parties.
_TLS_HINTS = {
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "the peer requires a client certificate",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "the client sent no certificate",
    "TLSV1_ALERT_UNKNOWN_CA": "the peer does not trust our certificate's issuer",
    "SSLV3_ALERT_BAD_CERTIFICATE": "the peer rejected our certificate",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "the peer rejected our certificate",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the peer refused the handshake (a client certificate?)",
    "WRONG_VERSION_NUMBER": "the peer does not speak TLS",
    "HTTP_REQUEST": "the peer does not speak TLS",
    "RECORD_LAYER_FAILURE": "the peer does not speak TLS",
    "PACKET_LENGTH_TOO_LONG": "the peer does not speak TLS",
    "UNEXPECTED_MESSAGE": "the peer does not speak TLS",
}


def describe_tls_error(e: ssl.SSLError) -> str:
    """A short human reason for an ``ssl.SSLError`` (no OpenSSL source locations)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {e.verify_message}"
    if isinstance(e, TLS_CLOSED):
        return "the peer closed the connection"
    reason = getattr(e, "reason", None)
    if not reason:
        return str(e)
    hint = _TLS_HINTS.get(reason)
    return f"{hint} ({reason})" if hint else reason.lower().replace("_", " ")


@dataclass(frozen=True)
class TLSConfig:
    """How one end speaks TLS.

    A server needs ``certfile`` (and ``keyfile`` unless the key is in the same PEM file).
    A client needs a certificate only when the server sets ``require_client_cert``.
    ``cafile`` is what the other end's certificate must chain to: for a client, the
    server's CA (or its self-signed certificate; None means the system store); for a
    server, the CA of client certificates (checked when sent, demanded with
    ``require_client_cert``, which needs ``cafile`` and ``certfile``: ValueError otherwise).
    ``server_hostname`` overrides the name a client checks the server certificate against
    (default: the host it connects to). ``insecure=True`` makes a client accept any server
    certificate: encryption without authentication, only for debugging.
    """

    certfile: StrPath | None = None
    keyfile: StrPath | None = None
    cafile: StrPath | None = None
    require_client_cert: bool = False
    server_hostname: str | None = None
    insecure: bool = False

    def __post_init__(self) -> None:
        if self.keyfile is not None and self.certfile is None:
            raise ValueError("keyfile given without certfile")
        if self.require_client_cert and self.cafile is None:
            raise ValueError("require_client_cert needs cafile (the client certificates' CA)")
        if self.require_client_cert and self.certfile is None:
            raise ValueError("require_client_cert is a server setting: it needs certfile too")

    def server_context(self) -> ssl.SSLContext:
        """The SSL context of a server holding this configuration."""
        if self.certfile is None:
            raise ValueError("a TLS server needs certfile (and keyfile)")
        ctx = _base_context(server=True)
        ctx.num_tickets = 0  # TLS 1.3: no tickets (TLS 1.2: OP_NO_TICKET, set in the base)
        self._load_chain(ctx)
        if self.require_client_cert:
            if self.cafile is None:  # refused in __post_init__; kept against a bypass
                raise ValueError("require_client_cert needs cafile (the client certificates' CA)")
            _load(ctx.load_verify_locations, "CA file", self.cafile)
            ctx.verify_mode = ssl.CERT_REQUIRED
        elif self.cafile is not None:
            _load(ctx.load_verify_locations, "CA file", self.cafile)
            ctx.verify_mode = ssl.CERT_OPTIONAL  # verify a client certificate if one is sent
        return ctx

    def client_context(self) -> ssl.SSLContext:
        """The SSL context of a client holding this configuration."""
        ctx = _base_context(server=False)  # CERT_REQUIRED and check_hostname
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.cafile is not None:
            _load(ctx.load_verify_locations, "CA file", self.cafile)
        else:
            ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
        if self.certfile is not None:
            self._load_chain(ctx)
        return ctx

    def _load_chain(self, ctx: ssl.SSLContext) -> None:
        assert self.certfile is not None
        keyfile = self.keyfile
        _load(lambda f: ctx.load_cert_chain(f, keyfile), "certificate/key", self.certfile)


def _base_context(*, server: bool) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server else ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers(_TLS12_CIPHERS)
    ctx.options |= ssl.OP_NO_TICKET  # no TLS 1.2 session tickets (no resumption wanted)
    return ctx


def _load(loader: Callable[[StrPath], object], what: str, path: StrPath) -> None:
    try:
        loader(path)
    except OSError as e:  # ssl.SSLError included (bad PEM, key not matching the certificate)
        raise TLSError(f"cannot load TLS {what} {os.fspath(path)!r}: {e}") from e


def tls_handshake(
    context: ssl.SSLContext,
    sock: socket.socket,
    *,
    server_side: bool,
    server_hostname: str | None,
    timeout: float | None,
    peer: str,
) -> ssl.SSLSocket:
    """Wrap ``sock`` and run the handshake; on any failure close it and raise TLSError.

    CPython applies an SSL socket's timeout to the whole handshake (one deadline, not one
    per read), which is what bounds a peer that trickles bytes.
    """
    try:
        tls_sock = context.wrap_socket(
            sock,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
        )
    except BaseException:
        sock.close()
        raise
    try:
        tls_sock.settimeout(timeout)
        tls_sock.do_handshake()
    except TimeoutError as e:
        tls_sock.close()
        raise TLSError(f"TLS handshake with {peer} timed out after {timeout} s") from e
    except OSError as e:  # ssl.SSLError, or the TCP connection reset
        tls_sock.close()
        if isinstance(e, ssl.SSLError) and not isinstance(e, TLS_CLOSED):
            why = describe_tls_error(e)
        else:
            why = "the connection was closed (does the peer speak TLS? did it refuse us?)"
        raise TLSError(f"TLS handshake with {peer} failed: {why}") from e
    return tls_sock


# ---- certificates -------------------------------------------------------------------------
def make_self_signed(
    directory: StrPath, hostname: str = "localhost", *, days: int = 7, name: str | None = None
) -> tuple[Path, Path]:
    """Write a self-signed server certificate and its key; return ``(certfile, keyfile)``.

    Valid for ``hostname``, 127.0.0.1 and ::1. Give the certificate to clients as their
    ``cafile`` to trust exactly this server.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(hostname)
    cert = _build(subject, key, subject, key, ca=False, hostnames=_local_names(hostname), days=days)
    return _write(directory, name or hostname, cert, key)


def make_ca(
    directory: StrPath, common_name: str = "safenet test CA", *, days: int = 7
) -> tuple[Path, Path]:
    """Write a self-signed CA certificate and key (``ca.crt``, ``ca.key``): the issuer of
    :func:`make_certificate`, and the ``cafile`` of whoever checks those certificates."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _name(common_name)
    cert = _build(subject, key, subject, key, ca=True, hostnames=(), days=days)
    return _write(directory, "ca", cert, key)


def make_certificate(
    directory: StrPath,
    ca: tuple[StrPath, StrPath],
    common_name: str,
    *,
    hostnames: tuple[str, ...] = (),
    days: int = 7,
) -> tuple[Path, Path]:
    """Write a certificate for ``common_name`` signed by ``ca = (certfile, keyfile)``.

    Usable by a client (mutual TLS, identified by its common name) and, with ``hostnames``
    (DNS names or IP addresses) set, by a server. Files are ``<common_name>.crt/.key``.
    """
    ca_cert = x509.load_pem_x509_certificate(Path(ca[0]).read_bytes())
    ca_key = serialization.load_pem_private_key(Path(ca[1]).read_bytes(), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TypeError("the CA key must be an EC key (as make_ca writes)")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _build(
        _name(common_name), key, ca_cert.subject, ca_key, ca=False, hostnames=hostnames, days=days
    )
    return _write(directory, common_name, cert, key)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _local_names(hostname: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys((hostname, "127.0.0.1", "::1")))


def _build(
    subject: x509.Name,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    hostnames: tuple[str, ...],
    days: int,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))  # tolerate small clock skew
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if not ca:
        usages = [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if hostnames:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(h) for h in hostnames]), critical=False
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _write(
    directory: StrPath, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> tuple[Path, Path]:
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    certfile, keyfile = out / f"{stem}.crt", out / f"{stem}.key"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # The key is created owner-only rather than chmod-ed after being written.
    fd = os.open(keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    if hasattr(os, "fchmod"):
        os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    return certfile, keyfile
