"""One process-wide log level (the console's ``loglevel``), for twisted.logger.

Twisted has no global filter (twisted#7969): a ``FilteringLogObserver`` wraps
one observer.  So this module keeps one ``LogLevelFilterPredicate`` and puts it
in front of the destination wherever a process opens it:

- a pool worker: ``globalLogBeginner.beginLoggingTo([filtered(log_to_master)])``;
- under twistd or twist: ``under_runner(service, options.parent)`` in
  ``makeService``.  twistd builds its observer after ``makeService``, taking
  the application's ``ILogObserver`` component when there is one; twist reads
  its ``fileLogObserverFactory`` option after ``makeService``.

``set_level`` changes the level at once for every filtered destination.
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from twisted.application.service import MultiService
from twisted.logger import (FilteringLogObserver, ILogObserver, LegacyLogObserverWrapper,
                            LogLevel, LogLevelFilterPredicate, textFileLogObserver)
from twisted.python.logfile import LogFile

LEVELS = tuple(level.name for level in LogLevel.iterconstants())

predicate = LogLevelFilterPredicate(LogLevel.info)


def filtered(observer) -> FilteringLogObserver:
    """``observer`` behind the process-wide level."""
    return FilteringLogObserver(observer, [predicate])


def set_level(name: str) -> None:
    """Drop events below ``name`` (one of ``LEVELS``) from now on; ValueError
    for an unknown name."""
    if name not in LEVELS:
        raise ValueError(f"unknown log level '{name}'; use one of {', '.join(LEVELS)}")
    predicate.setLogLevelForNamespace("", LogLevel.levelWithName(name))


def current() -> str:
    """The name of the level in force."""
    return predicate.logLevelForNamespace("").name


def under_runner(service, runner: dict[str, Any]):
    """The root service to hand twistd or twist (``runner``: their parsed
    options, a plugin's ``options.parent``) so that their log is filtered.

    twist: its log file observer is wrapped, behind its own ``--log-level``.
    twistd: the service is put under a root that gives the application twistd's
    destination, filtered (twistd's own ``--logger`` bypasses it).
    """
    if "fileLogObserverFactory" in runner:
        make = runner["fileLogObserverFactory"]
        runner["fileLogObserverFactory"] = lambda out: filtered(make(out))
        return service
    root = _TwistdRoot(runner)
    service.setServiceParent(root)
    return root


class _TwistdRoot(MultiService):
    """Sets the application's ``ILogObserver`` when twistd adds it there."""

    def __init__(self, config: dict[str, Any]):
        super().__init__()
        self.config = config

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        parent.setComponent(ILogObserver, filtered(twistd_destination(self.config)))


def twistd_destination(config: dict[str, Any]):
    """The observer twistd would open for ``config`` (as its Unix logger does):
    syslog, the ``--logfile`` (rotated on SIGUSR1), or stdout with ``-n``."""
    if config.get("syslog"):
        from twisted.python.syslog import SyslogObserver
        return LegacyLogObserverWrapper(SyslogObserver(config["prefix"]).emit)
    path = config.get("logfile") or ("-" if config.get("nodaemon") else "twistd.log")
    if path == "-":
        return textFileLogObserver(sys.stdout)
    log_file = LogFile.fromFullPath(path)
    if not signal.getsignal(signal.SIGUSR1):
        from twisted.internet import reactor
        signal.signal(signal.SIGUSR1,
                      lambda number, frame: reactor.callFromThread(log_file.rotate))
    return textFileLogObserver(log_file)
