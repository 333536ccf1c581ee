"""SIGTERM and SIGINT: stop cleanly and exit 0, in the master and in workers."""

from __future__ import annotations

import signal

from twisted.logger import Logger

_log = Logger()


def stop_on_signals(reactor) -> None:
    """SIGTERM and SIGINT stop the reactor, and the process then exits 0.

    Twisted's own handlers (installed during startup, so these replace them)
    make twistd and twist kill themselves with the signal after a clean
    shutdown; a requested stop is not a failure for pushsvc.
    """
    def stop(number, frame):
        _log.info("received {signal}, shutting down", signal=signal.Signals(number).name)
        for number in (signal.SIGTERM, signal.SIGINT):  # a second signal: no-op
            signal.signal(number, signal.SIG_IGN)
        reactor.callFromThread(reactor.stop)

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, stop)
