"""The few private fields of Twisted that pushsvc reads, in this one place.

Twisted offers no public way to ask these, and pushsvc needs them:

- how many bytes a transport (a TCP connection, a pipe to a worker) holds
  unwritten: a producer's pause and resume only say whether the buffer is
  past its limit or empty, and a peer that keeps up with a lag would never
  let it empty; and so whether a write may go to the kernel at once
  (``write_now``);
- the pipe under a ``StandardIO`` (a worker's end of its AMP pipe);
- the interface, port and backlog of a ``tcp:`` or ``ssl:`` endpoint, to
  bind SO_REUSEPORT copies of it in a pool's master, and the OpenSSL
  context factory of an ``ssl:`` one, to renew a certificate in place.

``tests/test_smoke.py`` checks each against the installed Twisted, so that a
Twisted that renames one fails the suite, not a server.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.internet.abstract import FileDescriptor


def unsent(transport: Any) -> int:
    """Bytes a Twisted FileDescriptor (a TCP transport, a pipe) holds unwritten."""
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen


def nothing_unsent(transport: Any) -> bool:
    """Whether a FileDescriptor holds nothing unwritten (cheaper than ``unsent``)."""
    return transport._tempDataLen == 0 and len(transport.dataBuffer) == transport.offset


def write_now(transport: Any, data: bytes) -> None:
    """Write ``data`` to a plain TCP connection or a pipe at once when it
    holds nothing unwritten, and leave to it whatever the kernel does not take.

    ``transport.write`` would wait for the reactor's next turn to write, at
    the cost of two ``epoll_ctl`` calls and a pass through the reactor per
    answer; this matters where one small write answers one small read (an
    HTTP answer, a WebSocket frame, a record on a worker's pipe).  A TLS
    transport is written to as usual.
    """
    if isinstance(transport, FileDescriptor) and not getattr(transport, "TLS", False):
        send_now(transport, transport.writeSomeData, data)
    else:
        transport.write(data)


def send_now(transport: Any, send: Callable[[bytes], Any], data: bytes) -> None:
    """``write_now`` for a transport known to be a plain FileDescriptor:
    ``send`` is its ``writeSomeData``, or its socket's ``send`` (cheaper, for
    a caller that knows the transport is TCP)."""
    if transport.connected and not transport.disconnecting and nothing_unsent(transport):
        try:
            sent = send(data)
        except OSError:  # EAGAIN, or an error the transport will find itself
            sent = 0
        if not isinstance(sent, int):  # writeSomeData's lost connection: the same
            sent = 0
        if sent == len(data):
            return
        data = data[sent:]
    transport.write(data)


def amp_failed(protocol: Any) -> bool:
    """Whether an AMP protocol has failed its outgoing commands (its
    connection is lost): ``callRemote`` then drops a fire-and-forget one."""
    return protocol._failAllReason is not None


def stdio_pipe(stdio: Any) -> Any:
    """The FileDescriptor a ``StandardIO`` writes to."""
    return stdio._writer


def tcp_binding(endpoint: Any) -> tuple[str, int, int]:
    """(interface, port, backlog) of a ``tcp:`` or ``ssl:`` server endpoint."""
    return endpoint._interface, endpoint._port, endpoint._backlog


def context_factory(endpoint: Any) -> Any:
    """The OpenSSL context factory (CertificateOptions) of an ``ssl:`` server endpoint."""
    return endpoint._sslContextFactory
