"""``twistd pushsvc`` / ``twist pushsvc``: command-line options and the service tree."""

from __future__ import annotations

import os
import sys

from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage

from .app import AppError, load_app
from .config import SPECS, ConfigError, Settings, build_settings, exposed_endpoints
from . import gc_tuning, loglevel
from .admin.service import admin_service
from .signals import reload_on_hangup, stop_on_signals

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
        try:  # here, so a module that cannot load stops start-up in one line
            load_app(self.settings.app)
        except AppError as e:
            raise ConfigError("--app", str(e))


def check_endpoint(description: str) -> None:
    """Raise ConfigError if ``description`` is not a usable endpoint string."""
    from twisted.internet import reactor
    try:
        serverFromString(reactor, description)
    except Exception as e:
        # Parsing reads the files an endpoint names (ssl: keys and
        # certificates), so besides ValueError, TypeError and KeyError it
        # raises OSError, OpenSSL's errors, VerifyError (key and certificate
        # do not match), IndexError, AttributeError (a bad sslmethod): all of
        # them mean the description is wrong.
        raise ConfigError("--listen", f"bad endpoint {description!r}: {e}")


def warn_if_open(settings: Settings, log: Logger = _log) -> bool:
    """Warn loudly when clients are not authenticated (``auth.mode = "none"``,
    the development default) and other machines can connect; True if so."""
    exposed = exposed_endpoints(settings.endpoints)
    if settings.auth_mode != "none" or not exposed:
        return False
    log.warn("SECURITY WARNING: client authentication is off (auth.mode = \"none\", "
             "the development default) and pushsvc listens on {endpoints}, which other "
             "machines can reach: any client may claim to be any user. Set [auth] mode "
             "= \"token\" or \"required\" with auth.jwt_secret or "
             "auth.jwt_public_key_file, or listen on 127.0.0.1 only.",
             endpoints=", ".join(exposed))
    return True


def warn_if_open_namespaces(settings: Settings, log: Logger = _log) -> bool:
    """Warn loudly when clients must authenticate but some namespace lets
    anyone join its groups (``join = "open"``); True if so."""
    from .namespaces import Namespaces
    names = Namespaces.from_settings(settings).open_in_secure_mode()
    if not names:
        return False
    log.warn("SECURITY WARNING: auth.mode is {mode!r} but any client may join the groups "
             "of namespace(s) {names} (join = \"open\"): do not carry private data there.",
             mode=settings.auth_mode, names=", ".join(repr(n) for n in names))
    return True


def makeService(options: Options, reactor=None):
    """Build the service tree for the options twistd parsed: one process
    (``--workers 0``) or a master with a pool of workers; ``reactor``
    defaults to the global one (twistd's)."""
    if reactor is None:
        from twisted.internet import reactor

    settings = options.settings
    warn_if_open(settings)
    warn_if_open_namespaces(settings)
    count = os.cpu_count() or 1 if settings.workers is None else settings.workers
    if count == 0:
        from .control import LocalControl
        from .server import PushServer
        service = PushServer(settings, reactor)
        for description in settings.endpoints:
            service.listen(reactor, description)
        control = LocalControl(service)
    else:
        from .pool.master import Master
        service = Master(settings, reactor, count)
        control = service.control
    admin = admin_service(settings, control, reactor)
    if admin is not None:
        admin.setServiceParent(service)
    reactor.addSystemEventTrigger("after", "startup", stop_on_signals, reactor)
    reactor.addSystemEventTrigger("after", "startup", reload_on_hangup, reactor, control)
    gc_tuning.tune(reactor)
    runner = getattr(options, "parent", None)  # twistd's or twist's options
    if runner is not None:  # filter their log by the console's level, in --log-format
        # One process is worker 0: its JSON lines say so, as a pool's workers' do.
        fields = {"worker": 0} if count == 0 else None
        return loglevel.under_runner(service, runner, settings.log_format, fields)
    return service
