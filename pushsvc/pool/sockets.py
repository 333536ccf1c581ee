"""The listening sockets of a pool, bound in the master and accepted on only
by the workers."""

from __future__ import annotations

import socket

from twisted.application.service import Service
from twisted.internet.abstract import isIPv6Address
from twisted.internet.endpoints import SSL4ServerEndpoint, _TCPServerEndpoint, serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory
from twisted.internet.tcp import makeBinding
from twisted.logger import Logger

from ..listening import LISTEN_ERRORS, exit_cannot_listen
from ..logtext import address_text, plural
from ..tls import is_tls
from ..twisted_private import tcp_binding

_log = Logger()


def check_free(interface: str, number: int) -> None:
    """CannotListenError when another process listens on ``interface``:``number``.

    Sockets with SO_REUSEPORT share a port with any other such socket of
    the same user: a second server on the port would bind too, and the
    kernel would split the clients between the two.  A socket without it
    cannot bind where anyone listens, so one is tried first.
    """
    family = socket.AF_INET6 if isIPv6Address(interface) else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface, number))
    except OSError as e:
        raise CannotListenError(interface, number, e)
    finally:
        probe.close()


def bind(reactor, description: str, copies: int) -> list:
    """Bind ``description`` in the master; its listening ports, not accepting.

    A TCP endpoint gets ``copies`` sockets on the same address with
    SO_REUSEPORT, one per worker, so the kernel spreads new connections evenly
    (on one shared socket every idle worker is woken and the same one tends to
    win).  An ``ssl:`` endpoint is bound the same way (its TCP sockets: each
    worker does the TLS itself).  Other endpoints get one socket that every
    worker shares.
    """
    endpoint = serverFromString(reactor, description)
    factory = Factory()
    factory.noisy = False
    if isinstance(endpoint, (_TCPServerEndpoint, SSL4ServerEndpoint)):
        interface, number, backlog = tcp_binding(endpoint)
        ports = []
        if number:
            check_free(interface, number)
        for _ in range(copies):
            binding = makeBinding(interface, number, reuseAddress=True, reusePort=True)
            ports.append(reactor.listenTCP(binding, factory, backlog))
            number = ports[0].getHost().port  # port 0: the others share the one chosen
    else:
        ports, failures = [], []
        endpoint.listen(factory).addCallbacks(ports.append, failures.append)
        if failures:  # listening is synchronous for these endpoints
            failures[0].raiseException()
    for port in ports:
        port.stopReading()
    return ports


class ListeningSockets(Service):
    """Every listening endpoint, bound in the master and accepted on only by workers."""

    def __init__(self, reactor, descriptions: list[str], copies: int):
        self.reactor = reactor
        self.descriptions = descriptions
        self.copies = copies
        self.ports: list[list] = []
        # Per endpoint, its description if the workers serve TLS on it, else None.
        self.tls: list[str | None] = []

    def privilegedStartService(self):
        super().privilegedStartService()
        for description in self.descriptions:
            try:
                ports = bind(self.reactor, description, self.copies)
            except LISTEN_ERRORS as e:
                exit_cannot_listen(description, e)
            _log.info("listening on {endpoint} ({address}, {sockets})", endpoint=description,
                      address=address_text(ports[0].getHost()),
                      sockets=plural(len(ports), "socket"), count=len(ports))
            self.ports.append(ports)
            self.tls.append(description if is_tls(description) else None)

    def startService(self):
        if not self.ports:
            self.privilegedStartService()
        super().startService()

    def stopService(self):
        super().stopService()
        for port in (p for ports in self.ports for p in ports):
            port.stopListening()

    def for_worker(self, index: int) -> list[tuple[int, int]]:
        """Worker ``index``'s socket of each endpoint: (descriptor, address family)."""
        return [(ports[index % len(ports)].fileno(), ports[index % len(ports)].addressFamily)
                for ports in self.ports]

    def address(self, endpoint: int = 0):
        return self.ports[endpoint][0].getHost()
