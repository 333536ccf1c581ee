"""One process-wide log level (the console's ``loglevel``), and the log's
format (``--log-format text|json``), for twisted.logger.

Twisted has no global filter (twisted#7969): a ``FilteringLogObserver`` wraps
one observer.  So this module keeps one ``LogLevelFilterPredicate`` and puts it
in front of the destination wherever a process opens it:

- a pool worker: ``globalLogBeginner.beginLoggingTo([filtered(log_to_master)])``;
- under twistd or twist: ``under_runner(service, options.parent, log_format)`` in
  ``makeService``.  twistd builds its observer after ``makeService``, taking
  the application's ``ILogObserver`` component when there is one; twist reads
  its ``fileLogObserverFactory`` option after ``makeService``.

``set_level`` changes the level at once for every filtered destination.

Per-connection lines are debug: some libraries log each connection at info
(AMP's "connection established", twisted.web's "Timing out client"); the
filter demotes those (``QUIET``) before it compares levels.

The format: ``text`` (twistd's usual lines) or ``json``, one JSON object per
line (``json_line``): ``time``, ``level``, ``namespace``, ``text``, the
event's own fields (``session``, ``user``, ``worker``, ...) and a failure's
``traceback``.  A pool worker always hands its events to the master as JSON
(``pool.worker.log_to_master``); the master re-emits them with ``worker``
(``RELAYED``), and its destination writes them in the chosen format.
"""

from __future__ import annotations

import json
import re
import signal
import sys
from datetime import datetime, timezone
from typing import Any, Callable

from twisted.application.service import MultiService
from twisted.logger import (FileLogObserver, FilteringLogObserver, ILogObserver,
                            LegacyLogObserverWrapper, LogLevel, LogLevelFilterPredicate,
                            formatEvent, textFileLogObserver)
from twisted.python.logfile import LogFile
from zope.interface import implementer

LEVELS = tuple(level.name for level in LogLevel.iterconstants())
FORMATS = ("text", "json")

# How the master re-emits a worker's event: ``index`` (and ``worker``) is the
# worker's slot, ``text`` the event's own text, ``traceback`` a failure's.
RELAYED = "worker {index}: {text}"
RELAYED_FAILURE = "worker {index}: {text}\n{traceback}"

predicate = LogLevelFilterPredicate(LogLevel.info)

# Lines the libraries under pushsvc log once per connection at info or warn,
# demoted to debug: (namespace prefix, what the text starts with).  What they
# report is counted instead (GET /metrics: pushsvc_dropped_total, ...).
QUIET = (
    # every console connection, every worker's pipe
    ("twisted.protocols.amp", re.compile(r"\w+ connection (established|lost) \(HOST:")),
    # an HTTP client too slow to send its request (slow_handshakes)
    ("twisted.web.http", re.compile(r"(Forcibly t|T)iming out client")),
    # a WebSocket closed for a limit (dropped_large, dropped_invalid), or cut
    ("autobahn.", re.compile(r"(failing WebSocket (connection|opening handshake)"
                             r"|dropping connection to peer)")),
)


def _quiet(event: dict) -> dict:
    """``event``, or a copy of it at debug when it is a per-connection line."""
    if event.get("log_level") not in (LogLevel.info, LogLevel.warn):
        return event
    namespace = event.get("log_namespace") or ""
    for prefix, pattern in QUIET:
        if namespace.startswith(prefix):
            try:
                text = formatEvent(event)
            except Exception:
                return event
            if pattern.match(text):
                return dict(event, log_level=LogLevel.debug)
    return event


@implementer(ILogObserver)
class _Filtered:
    """An observer behind the process-wide level, per-connection lines demoted first."""

    def __init__(self, observer):
        self.observer = FilteringLogObserver(observer, [predicate])

    def __call__(self, event):
        self.observer(_quiet(event))


def filtered(observer) -> Callable[[dict], None]:
    """``observer`` behind the process-wide level (per-connection lines demoted
    to debug first)."""
    return _Filtered(observer)


# -- JSON lines -------------------------------------------------------------------

# Keys of events from twisted.python.log (the legacy API) that repeat what the
# line already says.
_LEGACY = frozenset({"message", "format", "isError", "printed", "time", "system",
                     "failure", "why"})


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def json_line(event: dict, fields: dict[str, Any] | None = None) -> str:
    """One event as one line of JSON: ``time`` (ISO 8601, UTC), ``level``,
    ``namespace``, ``text``, then ``fields`` (defaults, e.g. the one process's
    ``worker``) and the event's own fields, and ``traceback`` for a failure.
    A value JSON cannot hold is written as its text."""
    level = event.get("log_level")
    relayed = event.get("log_format") in (RELAYED, RELAYED_FAILURE)
    try:
        text = event["text"] if relayed else formatEvent(event)
    except Exception:  # formatEvent never raises; a missing "text" might
        text = str(event.get("log_format"))
    out: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0, timezone.utc)
                .isoformat(timespec="milliseconds"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "text": text,
    }
    for key, value in (fields or {}).items():
        out.setdefault(key, value)
    for key, value in event.items():
        if (key.startswith("log_") or key in _LEGACY or key in out
                or (relayed and key == "index")):  # a relayed event's "worker" says it
            continue
        out[key] = value
    failure = event.get("log_failure")
    if failure is not None and "traceback" not in out:
        try:
            out["traceback"] = failure.getTraceback()
        except Exception:
            out["traceback"] = repr(failure)
    try:
        # ASCII: a lone surrogate (from client data) has no UTF-8 form.
        return json.dumps(out, default=_plain, ensure_ascii=True) + "\n"
    except ValueError:  # a circular value
        return json.dumps({k: _plain(v) if k not in ("time", "level") else v
                           for k, v in out.items()}, ensure_ascii=True) + "\n"


def json_file_observer(out, fields: dict[str, Any] | None = None) -> FileLogObserver:
    """Writes each event to the file ``out`` as one line of JSON (``json_line``)."""
    return FileLogObserver(out, lambda event: json_line(event, fields))


def file_observer(out, log_format: str = "text", fields: dict[str, Any] | None = None):
    """The observer writing to ``out`` in ``log_format`` (``FORMATS``)."""
    if log_format == "json":
        return json_file_observer(out, fields)
    return textFileLogObserver(out)


def set_level(name: str) -> None:
    """Drop events below ``name`` (one of ``LEVELS``) from now on; ValueError
    for an unknown name."""
    if name not in LEVELS:
        raise ValueError(f"unknown log level '{name}'; use one of {', '.join(LEVELS)}")
    predicate.setLogLevelForNamespace("", LogLevel.levelWithName(name))


def current() -> str:
    """The name of the level in force."""
    return predicate.logLevelForNamespace("").name


def under_runner(service, runner: dict[str, Any], log_format: str = "text",
                 fields: dict[str, Any] | None = None):
    """The root service to hand twistd or twist (``runner``: their parsed
    options, a plugin's ``options.parent``) so that their log is filtered and
    written in ``log_format`` (``fields``: added to every JSON line).

    twist: its log file observer is wrapped, behind its own ``--log-level``
    (with ``json``, pushsvc's JSON lines replace twist's own format).
    twistd: the service is put under a root that gives the application twistd's
    destination, filtered (twistd's own ``--logger`` bypasses it).
    """
    if "fileLogObserverFactory" in runner:
        make = runner["fileLogObserverFactory"]
        if log_format == "json":
            make = lambda out: json_file_observer(out, fields)  # noqa: E731
        runner["fileLogObserverFactory"] = lambda out: filtered(make(out))
        return service
    root = _TwistdRoot(runner, log_format, fields)
    service.setServiceParent(root)
    return root


class _TwistdRoot(MultiService):
    """Sets the application's ``ILogObserver`` when twistd adds it there."""

    def __init__(self, config: dict[str, Any], log_format: str = "text",
                 fields: dict[str, Any] | None = None):
        super().__init__()
        self.config = config
        self.log_format = log_format
        self.fields = fields

    def setServiceParent(self, parent):
        super().setServiceParent(parent)
        parent.setComponent(ILogObserver, filtered(
            twistd_destination(self.config, self.log_format, self.fields)))


def twistd_destination(config: dict[str, Any], log_format: str = "text",
                       fields: dict[str, Any] | None = None):
    """The observer twistd would open for ``config`` (as its Unix logger does):
    syslog (text whatever the format), the ``--logfile`` (rotated on
    SIGUSR1), or stdout with ``-n``; in ``log_format``."""
    if config.get("syslog"):
        from twisted.python.syslog import SyslogObserver
        return LegacyLogObserverWrapper(SyslogObserver(config["prefix"]).emit)
    path = config.get("logfile") or ("-" if config.get("nodaemon") else "twistd.log")
    if path == "-":
        return file_observer(sys.stdout, log_format, fields)
    log_file = LogFile.fromFullPath(path)
    if not signal.getsignal(signal.SIGUSR1):
        from twisted.internet import reactor
        signal.signal(signal.SIGUSR1,
                      lambda number, frame: reactor.callFromThread(log_file.rotate))
    return file_observer(log_file, log_format, fields)
