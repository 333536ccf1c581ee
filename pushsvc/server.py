"""The service tree of one pushsvc process: engine, broker, listeners."""

from __future__ import annotations

from twisted.application.service import MultiService, Service
from twisted.internet.endpoints import (AdoptedStreamServerEndpoint, TCP4ServerEndpoint,
                                        serverFromString)
from twisted.internet.defer import Deferred, DeferredList
from twisted.logger import Logger

from .app import AppError, load_app
from .broker import make_broker
from .broker.local import LocalBroker
from .engine import Engine
from .keeper import Keeper
from .reloadable import IReloadable
from .http import build_site
from .ids import IdMaker
from .listening import ListenerService
from .logtext import plural
from .pusher.webhook_sender import SenderService, watch_occupancy, watch_redis_occupancy
from .tls import TLSContext, TLSError, describe_certificate, is_tls
from .twisted_private import tcp_binding
from .websocket import prepare_frame
from .wsfactory import PushServerFactory

_log = Logger()


class EngineService(Service):
    """Starts the engine; at stop, closes every client with 1001 and waits."""

    def __init__(self, engine: Engine, ws_factory: PushServerFactory):
        self.engine = engine
        self.ws_factory = ws_factory

    def startService(self):
        super().startService()
        self.engine.start()

    def stopService(self):
        super().stopService()
        self.engine.stop()
        count = len(self.ws_factory.connections)
        if count:
            _log.info("closing {clients}", clients=plural(count, "client connection"),
                      count=count)
        # The broker goes last: it may still carry what the closing sessions sent.
        return self.ws_factory.close_all().addBoth(lambda _: self.engine.broker.close())


def backend_maker(reactor):
    """What the engine makes its BackendProxy with (pushsvc/proxy.py): for
    ``url``, as the [proxy] ``settings`` say, with its metrics callbacks."""
    def make(url: str, settings, count, observe):
        from .proxy import BackendProxy
        return BackendProxy(reactor, url, timeout=settings.proxy_timeout,
                            max_in_flight=settings.proxy_max_in_flight,
                            on_error=settings.proxy_on_error, secret=settings.proxy_secret,
                            observe=observe, count=count)
    return make


class PushServer(MultiService):
    """One process serving WebSocket clients and the HTTP API.

    ``engine``, ``ws_factory`` and ``site`` are kept for tests and for the
    worker pool, which builds the same tree inside each worker.
    """

    def __init__(self, settings, reactor, broker=None, worker: int = 0, clock=None,
                 gather_metrics=None):
        super().__init__()
        self.tls: list[TLSContext] = []  # one per ssl: listener; reload renews them
        self.settings = settings
        # One process keeps the history and mailbox itself; a pool worker's
        # are the hub's; with Redis, Redis keeps them.
        self.keeper = None
        if broker is None and not settings.redis:
            self.keeper = Keeper.from_settings(settings)
        self.broker = broker or make_broker(
            settings, worker, reactor, clock,
            otherwise=lambda: LocalBroker(self.keeper, clock or reactor))
        self.engine = Engine(settings, self.broker, IdMaker(settings.node, worker),
                             clock or reactor, prepare=prepare_frame,
                             backend=backend_maker(reactor))
        self.engine.set_app(load_app(settings.app))  # AppError when it cannot load
        self.ws_factory = PushServerFactory(self.engine, settings, reactor)
        self.site = build_site(self.engine, self.ws_factory, settings, reactor=clock,
                               gather_metrics=gather_metrics)
        webhooks = self.site.pusher.webhooks
        SenderService(webhooks).setServiceParent(self)  # stops after the engine's service
        if self.keeper is not None:  # one process: its keeper sees every subscription
            watch_occupancy(self.keeper.table, webhooks)
        elif settings.redis:  # Redis sees every node's (broker/redis_occupancy.py)
            watch_redis_occupancy(self.broker, webhooks)
        EngineService(self.engine, self.ws_factory).setServiceParent(self)

    def stopService(self):
        self.site.pusher.webhooks.stopping = True  # see watch_redis_occupancy
        return super().stopService()

    def reload(self, settings) -> str | None:
        """Use ``settings``, a freshly loaded application module and freshly
        read TLS keys and certificates, keeping every connection; None, or why
        nothing changed (the module did not load, a key or certificate
        cannot be used).

        Settings that only a restart can change (the listeners, the workers,
        the node name, the admin endpoint) are kept as they are.  A renewed
        certificate is for the connections accepted from now on.
        """
        try:
            app = load_app(settings.app)
        except AppError as e:
            return str(e)
        try:
            renewed = [(context, context.load()) for context in self.tls]
        except TLSError as e:
            return f"TLS: {e}"
        skipped = self.settings.needs_restart(settings)
        if skipped:
            _log.warn("reload: {names} changed in the config file; only a restart "
                      "applies that", names=", ".join(skipped))
        settings = self.settings = self.settings.reloaded(settings)
        for piece in self.reloadables():
            piece.configure(settings)
        self.engine.set_app(app)
        for context, options in renewed:
            if context.use(options):
                _log.info("TLS on {endpoint}: new connections get the certificate "
                          "{certificate}", endpoint=context.description,
                          certificate=describe_certificate(options))
        return None

    def stop_accepting(self) -> Deferred:
        """Close the listeners; fires when they are closed."""
        stops = [service.stopService() for service in self
                 if isinstance(service, ListenerService) and service.running]
        return DeferredList([s for s in stops if isinstance(s, Deferred)])

    def reloadables(self) -> list:
        """What a reload configures (each an ``IReloadable``)."""
        kept = [] if self.keeper is None else [self.keeper]
        broker = [self.broker] if IReloadable.providedBy(self.broker) else []
        return [self.engine, *kept, *broker, self.ws_factory, self.site]

    def retire(self, code: int, reason: str, drain: float = 0.0) -> Deferred:
        """Stop accepting, then close every client with ``code``, spread over
        ``drain`` seconds; fires when all are gone (a rolling restart's old
        worker)."""
        self.site.pusher.webhooks.stopping = True  # see watch_redis_occupancy
        return self.stop_accepting().addCallback(
            lambda _: self.ws_factory.close_all(code, reason, over=drain))

    def listen(self, reactor, description: str) -> ListenerService:
        """Add a listener on a Twisted endpoint string; it starts with the service.

        An ``ssl:`` endpoint listens as TCP with TLS done here (``tls.TLSContext``),
        so that a reload can renew its certificate; TLSError if its files
        cannot be used.
        """
        if is_tls(description):
            context = TLSContext(reactor, description)
            interface, port, backlog = tcp_binding(context.endpoint)
            endpoint = TCP4ServerEndpoint(reactor, port, backlog, interface)
            return self._listener(description, endpoint, context)
        return self._listener(description, serverFromString(reactor, description))

    def adopt(self, reactor, fd: int, family: int, tls: str | None = None) -> ListenerService:
        """Add a listener on an inherited listening socket (a pool worker's);
        ``tls``: the ``ssl:`` description whose key and certificate it serves
        TLS with (TLSError if they cannot be used), None for plain TCP."""
        endpoint = AdoptedStreamServerEndpoint(reactor, fd, family)
        if tls is None:
            return self._listener(f"inherited socket {fd}", endpoint)
        return self._listener(f"inherited socket {fd} (TLS, {tls})", endpoint,
                              TLSContext(reactor, tls))

    def _listener(self, description: str, endpoint, tls: TLSContext | None = None
                  ) -> ListenerService:
        factory = self.site
        if tls is not None:
            self.tls.append(tls)
            factory = tls.wrap(self.site)
        service = ListenerService(description, endpoint, factory)
        service.setServiceParent(self)
        return service
