"""A client's ``send``: the namespaces' policy, the backend proxy, the
application's ``on_message``, then out as a message ``from`` the session."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred

from ..app import Answer, Deliver, Refused, SessionInfo
from ..protocol import Address, Request, parse_address
from ..sessions import Session


class Sending:
    """The ``send`` op of one engine."""

    def __init__(self, engine):
        self.engine = engine

    def send(self, session: Session, request: Request) -> Deferred | None:
        engine = self.engine
        ask = engine.joins.namespaces.check_send(session, request.to)
        engine.counters["sent_by_clients"] += 1
        if ask and engine.backends.send is not None:
            d = engine.joins.ask_send(session, request.to.to_json(), request.data)
            return d.addCallback(lambda data: self._to_app(session, request, data))
        return self._to_app(session, request, request.data)

    def _to_app(self, session: Session, request: Request, data: Any) -> Deferred | None:
        """A send the rules allow: to ``on_message``, then out."""
        engine = self.engine
        if engine.gone(session):
            return None
        hook = engine.hooks.get("on_message")
        if hook is None:
            self._pass_on(session, request, request.to, data)
            return None

        def outcome(result: Any) -> Answer | tuple[Address, Any]:
            if result is None or result is True:
                return request.to, data
            if result is False:
                raise Refused()
            if isinstance(result, Answer):
                return result
            if isinstance(result, Deliver):
                to = (request.to if result.to is None
                      else parse_address(result.to, engine.settings.max_targets))
                return to, result.data
            raise TypeError(f"on_message returned {result!r}; expected None, True, "
                            "False, Deliver or Answer")
        return engine.hooks.call("on_message", hook, SessionInfo.of(session),
                                 request.to.to_json(), data, result=outcome).addCallback(
            self._sent, session, request)

    def _sent(self, outcome: Answer | tuple[Address, Any], session: Session,
              request: Request) -> Deferred | None:
        if not isinstance(outcome, Answer):
            return self._pass_on(session, request, *outcome)
        if outcome.silent:
            self.engine.ok(session, request)
        else:
            self.engine.ok(session, request, id=self.engine.answer(session, outcome.data))
        return None

    def _pass_on(self, session: Session, request: Request, to: Address, data: Any
                 ) -> Deferred:
        """Publish what a client sent; ``ok`` it with the message id."""
        sender = {"session": session.id, "user": session.user}
        return self.engine.publish(to, data, sender).addCallback(
            lambda msg_id: self.engine.ok(session, request, id=msg_id))
