"""``twistd pushsvc`` / ``twist pushsvc``: command-line options and the service tree."""

from __future__ import annotations

import signal
import sys

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from .config import SPECS, ConfigError, Settings, build_settings

_log = Logger()


class Options(usage.Options):
    """The pushsvc command line; each flag mirrors a setting in the config file."""

    synopsis = "[options]"
    longdesc = ("Run the pushsvc WebSocket push server. Every option can also be "
                "set in the TOML config file; the command line wins.")
    optParameters = [
        [spec.flag, None, None, f"{spec.help} [config: {spec.setting}, default: "
                                f"{spec.default!r}]"]
        for spec in SPECS if spec.flag and spec.flag != "listen"
    ] + [["config", "c", None, "TOML config file (sample: etc/pushsvc.toml)"]]

    settings: Settings

    def __init__(self):
        super().__init__()
        self["listen"] = None

    def opt_listen(self, endpoint):
        """Twisted endpoint string to listen on, e.g. tcp:8080 or
        ssl:8443:privateKey=key.pem:certKey=cert.pem (repeatable)"""
        self["listen"] = (self["listen"] or []) + [endpoint]

    def parseOptions(self, options=None):
        """Parse, then fold in the config file; any mistake ends in one line."""
        try:
            super().parseOptions(options)
        except (usage.UsageError, ConfigError) as e:
            sys.stderr.write(f"pushsvc: {e}\n")
            raise SystemExit(2)

    def postOptions(self):
        overrides = {spec.key: self.get(spec.flag) for spec in SPECS if spec.flag}
        self.settings = build_settings(self["config"], overrides)
        for description in self.settings.endpoints:
            check_endpoint(description)


def check_endpoint(description: str) -> None:
    """Raise ConfigError if ``description`` is not a usable endpoint string."""
    from twisted.internet import reactor
    try:
        serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError("--listen", f"bad endpoint {description!r}: {e}")


def makeService(options: Options):
    """Build the service tree for the options twistd parsed."""
    from twisted.internet import reactor

    from .server import PushServer

    settings = options.settings
    if settings.workers != 0:
        _log.warn("workers = {workers}: the worker pool is not built yet; "
                  "running everything in one process",
                  workers="auto" if settings.workers is None else settings.workers)
    server = PushServer(settings, reactor)
    for description in settings.endpoints:
        server.listen(reactor, description)
    reactor.addSystemEventTrigger("after", "startup", stop_on_signals, reactor)
    return server


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
