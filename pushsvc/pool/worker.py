"""``python -m pushsvc.pool.worker``: one worker process, started by the master.

The master passes, in the environment variable ``PUSHSVC_WORKER``, the settings,
this worker's index and the listening sockets it inherited (descriptor and
address family, and for each the ``ssl:`` description when this worker serves
TLS on it).  AMP to the hub runs on descriptors 3 (in) and 4 (out), with
``--redis`` too (the hub carries this node's messages while Redis is away).
When that pipe closes, the master is gone and the worker stops.
"""

from __future__ import annotations

import json
import os
import signal
import sys

from twisted.internet.stdio import StandardIO
from twisted.logger import Logger, eventAsJSON, eventAsText, globalLogBeginner

from .. import gc_tuning, loglevel
from ..broker import make_broker
from ..broker.amp import AmpBroker, WorkerProtocol
from ..config import Settings
from ..logtext import plural
from ..server import PushServer
from ..signals import stop_on_signals
from ..tls import TLSError
from ..twisted_private import stdio_pipe, write_now
from ..wire.hub_commands import GatherMetrics, Hello
from ..wire.worker_commands import Reload, Retire, SetLogLevel, StopAccepting
from . import AMP_IN, AMP_OUT, ENV, FIRST_SOCKET, STOP_GRACE

# Run as ``python -m pushsvc.pool.worker``: named for the module, not __main__.
_log = Logger(namespace="pushsvc.pool.worker")


# What a log event holds that says nothing once it has left this process.
_LOCAL_ONLY = ("log_logger", "log_source", "log_observer", "log_io")


def log_to_master(event) -> None:
    """Write each log event to stdout as one line of JSON (twisted.logger's
    ``eventAsJSON``: its fields and its formatted text; a failure as the
    ``traceback`` field); the master re-emits it in its own log with the worker's index
    (``pool.process.WorkerProcess``), as text or JSON (``--log-format``)."""
    fields = {k: v for k, v in event.items() if k not in _LOCAL_ONLY}
    failure = fields.pop("log_failure", None)
    legacy = fields.pop("failure", None)  # twisted.python.log.err's
    failure = failure if failure is not None else legacy
    if hasattr(failure, "getTraceback"):  # a Failure does not survive JSON: its text does
        fields["traceback"] = failure.getTraceback().rstrip("\n")
    try:
        line = eventAsJSON(fields)
    except Exception:  # an event that will not encode: its text, as a plain line
        line = eventAsText(event, includeTimestamp=False, includeSystem=False)
        line = line.replace("\n", "\n\t")
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


class PipeIO(StandardIO):
    """The worker's end of its AMP pipe (descriptors 3 and 4), whose records
    leave at once rather than at the reactor's next turn."""

    def write(self, data):
        pipe = stdio_pipe(self)
        if pipe is not None:
            write_now(pipe, data)


class WorkerEnd(WorkerProtocol):
    """The worker's end of the AMP pipe: the broker's traffic, and the
    master's orders for this process (reload, retire)."""

    def __init__(self, broker: AmpBroker, server: PushServer, reactor, on_lost=None):
        super().__init__(broker, on_lost)
        self.server = server
        self.reactor = reactor

    @Reload.responder
    def reload(self, settings):
        error = self.server.reload(Settings.from_json(settings))
        if error:
            _log.error("reload failed, the old code and settings stay: {error}", error=error)
        else:
            _log.info("reloaded the settings and the application")
        return {"error": error or ""}

    @SetLogLevel.responder
    def set_log_level(self, level):
        loglevel.set_level(level)
        return {}

    @StopAccepting.responder
    def stop_accepting(self):
        return self.server.stop_accepting().addCallback(lambda _: {})

    @Retire.responder
    def retire(self, code, reason, drain):
        count = len(self.server.ws_factory.connections)
        _log.info("retiring: closing {clients} with {code} over {drain:g} s",
                  clients=plural(count, "client"), count=count, code=code, drain=drain)
        self.server.retire(code, reason, drain).addBoth(lambda _: self.reactor.stop())
        return {}


def exit_now(index: int, limit: float) -> None:
    """The end of a worker whose stop did not finish within ``limit`` seconds."""
    _log.error("worker {index} did not stop within {limit:g} s of its master's end; "
               "exiting now", index=index, limit=limit)
    os._exit(1)


def main() -> None:
    spec = json.loads(os.environ.pop(ENV))
    settings = Settings.from_json(spec["settings"])
    index = spec["index"]
    loglevel.set_level(spec["log_level"])
    globalLogBeginner.beginLoggingTo([loglevel.filtered(log_to_master)],
                                     redirectStandardIO=False)

    from twisted.internet import reactor

    # Redis carries this worker's messages and commands itself when set; the
    # AMP pipe then serves the master's orders, and the node's messages and
    # commands while Redis is away (broker/redis.py).
    broker = make_broker(settings, index, reactor, master_pid=os.getppid(),
                         otherwise=lambda: AmpBroker(epoch=spec["epoch"]))
    # GET /metrics answers for the whole machine: the master sums the workers.
    server = PushServer(settings, reactor, broker=broker, worker=index,
                        gather_metrics=lambda: hub.callRemote(GatherMetrics).addCallback(
                            lambda answer: answer["values"]))

    def master_gone(reason):
        if reactor.running:
            _log.warn("the master is gone; worker {index} stops", index=index)
            reactor.stop()

    def bound_the_stop():
        # Once a worker stops, for whatever reason, it is gone within the
        # time the master gives it: if its master is gone too, nobody else
        # would end a stop that cannot finish (a Redis that is away).
        limit = settings.close_timeout + STOP_GRACE
        reactor.callLater(limit, exit_now, index, limit)

    hub = WorkerEnd(broker, server, reactor, on_lost=master_gone)
    PipeIO(hub, stdin=AMP_IN, stdout=AMP_OUT, reactor=reactor)
    if isinstance(broker, AmpBroker):
        broker.connect(hub)
    else:  # a RedisBroker: within this node, the hub carries what Redis cannot
        broker.use_hub(hub)
    tls = spec.get("tls") or [None] * len(spec["families"])
    for offset, (family, description) in enumerate(zip(spec["families"], tls)):
        try:
            server.adopt(reactor, FIRST_SOCKET + offset, family, tls=description)
        except TLSError as e:  # the files changed since the master read them
            _log.critical("cannot serve TLS: {error}", error=e)
            raise SystemExit(1)
    server.startService()
    hub.callRemote(Hello, index=index, owner=server.engine.ids.owner).addErrback(
        lambda f: _log.failure("could not greet the master", f))
    reactor.addSystemEventTrigger("before", "shutdown", bound_the_stop)
    reactor.addSystemEventTrigger("before", "shutdown", server.stopService)
    reactor.addSystemEventTrigger("after", "startup", stop_on_signals, reactor)
    gc_tuning.tune(reactor)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a reload is the master's to order
    reactor.run()


if __name__ == "__main__":
    main()
