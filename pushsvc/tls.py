"""TLS on ``ssl:`` endpoints, with a certificate that a reload can renew.

pushsvc never lets Twisted's ``SSL4ServerEndpoint`` listen: it listens (or, in
a pool worker, adopts the master's socket) as plain TCP and wraps the site in
``TLSMemoryBIOFactory`` with a ``TLSContext``.  The ``TLSContext`` hands each
new connection the current OpenSSL context; ``reload`` reads the key and
certificate files again and swaps the context, so connections accepted from
then on get the new certificate and the open ones keep the one they began
with.

The files are read by Twisted's own ``ssl:`` parser (``serverFromString``), so
every option of the description (``certKey``, ``extraCertChain``,
``dhParameters``, ``sslmethod``) means what it means to Twisted.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet.endpoints import SSL4ServerEndpoint, serverFromString
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from zope.interface import implementer

from .twisted_private import context_factory

_log = Logger()


class TLSError(Exception):
    """The key or certificate of an ``ssl:`` endpoint cannot be used."""


def is_tls(description: str) -> bool:
    """Whether an endpoint string is a TLS server endpoint (``ssl:``); reads no file."""
    return description.lstrip().split(":", 1)[0] == "ssl"


def parse(reactor, description: str) -> SSL4ServerEndpoint:
    """Twisted's endpoint for an ``ssl:`` description (this reads the key and
    certificate files); TLSError if they cannot be used."""
    try:
        endpoint = serverFromString(reactor, description)
    except Exception as e:  # OSError, OpenSSL's errors, VerifyError, ValueError...
        raise TLSError(f"{description}: {_reason(e)}") from None
    if not isinstance(endpoint, SSL4ServerEndpoint):
        raise TLSError(f"{description}: not an ssl: endpoint")
    return endpoint


def _reason(error: Exception) -> str:
    if isinstance(error, (crypto.Error, SSL.Error)) and error.args and isinstance(
            error.args[0], list):  # [(library, function, reason), ...]
        found = "; ".join(": ".join(part for part in entry if part)
                          for entry in error.args[0] if isinstance(entry, tuple))
        return f"not a usable PEM key or certificate (OpenSSL: {found or error})"
    text = str(error) or type(error).__name__
    return text if text.startswith(type(error).__name__) else f"{type(error).__name__}: {text}"


def _fingerprint(options) -> str:
    der = options.certificate.to_cryptography().public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()


def describe_certificate(options) -> str:
    """``subject ..., serial ..., expires ...`` of the certificate in ``options``."""
    cert = options.certificate.to_cryptography()
    expires = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after
    return (f"subject {cert.subject.rfc4514_string()}, serial {cert.serial_number:x}, "
            f"expires {expires:%Y-%m-%d %H:%M} UTC")


@implementer(IOpenSSLContextFactory)
class TLSContext:
    """The OpenSSL context of one ``ssl:`` endpoint; ``load`` + ``use`` renew it.

    ``TLSMemoryBIOFactory`` asks ``getContext`` once per new connection.
    """

    def __init__(self, reactor, description: str):
        self.reactor = reactor
        self.description = description
        self.endpoint = parse(reactor, description)
        self.options = None
        self.use(self._check(context_factory(self.endpoint)))

    def getContext(self):
        return self.options.getContext()

    def wrap(self, factory) -> TLSMemoryBIOFactory:
        """``factory`` (the site) behind TLS with this context."""
        return TLSMemoryBIOFactory(self, False, factory)

    def load(self):
        """Read the key and certificate files again: options for ``use``, or TLSError."""
        return self._check(context_factory(parse(self.reactor, self.description)))

    def _check(self, options):
        try:
            options.getContext()  # builds the context now, not at the next connection
        except Exception as e:
            raise TLSError(f"{self.description}: {_reason(e)}") from None
        return options

    def use(self, options) -> bool:
        """New connections get ``options`` from now on; whether the certificate changed."""
        changed = self.options is None or _fingerprint(options) != _fingerprint(self.options)
        self.options = options
        return changed
