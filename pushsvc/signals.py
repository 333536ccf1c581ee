"""Signals: SIGTERM and SIGINT stop cleanly and exit 0 (master and workers);
SIGHUP reloads (the master, or the one process)."""

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


def reload_on_hangup(reactor, control) -> None:
    """SIGHUP reloads the config file and the application module, as
    ``pushsvc-admin reload`` does (``control`` is the server's IControl); the
    log says how each worker fared."""
    def hangup(number, frame):
        reactor.callFromThread(reload)

    def reload():
        _log.info("received SIGHUP, reloading")
        control.reload().addCallbacks(report, lambda f: _log.error(
            "reload refused, nothing changed: {error}", error=f.getErrorMessage()))

    def report(results):
        for result in results:
            if result["ok"]:
                _log.info("worker {worker} reloaded", worker=result["worker"])
            else:
                _log.error("worker {worker} kept its old code and settings: {error}",
                           worker=result["worker"], error=result["error"])

    signal.signal(signal.SIGHUP, hangup)
