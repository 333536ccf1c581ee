"""Application hooks: loading, the chat example and each hook over real sockets."""

import os
import sys
from types import SimpleNamespace

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from pushsvc.app import App, AppError, Answer, Deliver, Refused, load_app
from pushsvc.client import ServerError
from pushsvc.engine import MAX_WAITING
from tests.helpers import ServerTestCase, eventually, run
from tests.test_engine import EngineTestCase

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "chat.py")


def app(**hooks):
    """An App whose module holds ``hooks``."""
    return App("test", SimpleNamespace(**hooks))


class LoadAppTests(unittest.TestCase):
    def write(self, source: str, path: str | None = None) -> str:
        path = path or self.mktemp() + ".py"
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as f:
            f.write(source)
        return path

    def assertAppError(self, spec: str, expected: str) -> None:
        e = self.assertRaises(AppError, load_app, spec)
        self.assertEqual(str(e), expected)

    def test_nothing(self):
        self.assertIsNone(load_app(""))

    def test_example(self):
        loaded = load_app(EXAMPLE)
        self.assertEqual(loaded.spec, EXAMPLE)
        self.assertIsNone(loaded.on_connect)
        for hook in ("on_auth", "on_message", "on_disconnect"):
            self.assertIs(getattr(loaded, hook), getattr(loaded.module, hook))

    def test_errors_are_one_line(self):
        path = self.write("def on_message(session, api, to, data):\n    return (\n")
        self.assertAppError(path, f"{path}, line 2: SyntaxError: '(' was never closed")
        path = self.write("import json\n\nraise RuntimeError('boom\\nmore')\n")
        self.assertAppError(path, f"{path}, line 3: RuntimeError: boom")
        path = self.write("on_message = 5\n")
        self.assertAppError(path, f"{path}: on_message is not callable")
        self.assertAppError("missing.py", "missing.py: FileNotFoundError: "
                                          "No such file or directory")
        self.assertAppError("no_such_pushsvc_app", "no_such_pushsvc_app: "
                            "ModuleNotFoundError: No module named 'no_such_pushsvc_app'")

    def test_a_path_loads_fresh_code_each_time(self):
        path = self.write("def on_message(session, api, to, data):\n    return 1\n")
        first = load_app(path)
        self.write("def on_message(session, api, to, data):\n    return 2\n", path)
        second = load_app(path)
        self.assertEqual((first.on_message(None, None, None, None),
                          second.on_message(None, None, None, None)), (1, 2))

    def test_a_dotted_name_from_the_current_directory_loads_fresh(self):
        module = "pushsvc_test_app_" + self.id().rsplit(".", 1)[-1]
        path = os.path.join(os.getcwd(), module + ".py")
        self.addCleanup(os.remove, path)
        self.addCleanup(sys.modules.pop, module, None)
        self.write("def on_connect(session, api):\n    return 'v1'\n", path)
        self.assertEqual(load_app(module).on_connect(None, None), "v1")
        self.write("def on_auth(session, api, user, token):\n    return 'v2'\n", path)
        second = load_app(module)
        self.assertIsNone(second.on_connect)  # a fresh module: no leftovers
        self.assertEqual(second.on_auth(None, None, None, None), "v2")
        self.write("x = (\n", path)
        self.assertAppError(module, f"{module}.py, line 1: SyntaxError: "
                                    "'(' was never closed")
        self.assertIs(sys.modules[module], second.module)  # a failed load keeps the old


class ChatExampleTests(ServerTestCase):
    """examples/chat.py, loaded by the server from its settings."""

    def setUp(self):
        self.start_server(app=EXAMPLE)

    async def chat(self, user):
        c = await self.client(user)
        self.assertIn({"op": "joined", "group": "lobby", "reason": "server"}, c.frames)
        return c

    @staticmethod
    def said(client):
        return [(m["from"]["user"], m["data"]) for m in client.messages]

    @run
    async def test_auth_joins_the_lobby(self):
        alice = await self.chat("alice")
        self.assertEqual([f["op"] for f in alice.frames], ["welcome", "joined", "welcome", "ok"])
        self.assertEqual(self.engine.registry.get(alice.session).groups, {"lobby"})

    @run
    async def test_clean_text_reaches_the_room(self):
        alice, bob = await self.chat("alice"), await self.chat("bob")
        ok = await alice.request("send", to={"group": "lobby"}, data="hello")
        await bob.wait_for_messages(1)
        await alice.wait_for_messages(1)
        self.assertEqual(self.said(bob), [("alice", "hello")])
        self.assertEqual(self.said(alice), [("alice", "hello")])
        self.assertEqual(bob.messages[0]["id"], ok["id"])

    @run
    async def test_rude_words_are_starred_out(self):
        alice, bob = await self.chat("alice"), await self.chat("bob")
        await alice.request("send", to={"group": "lobby"}, data="what the Heck, darn it")
        await bob.wait_for_messages(1)
        self.assertEqual(self.said(bob), [("alice", "what the ***, *** it")])

    @run
    async def test_who_answers_the_sender_alone(self):
        alice, bob = await self.chat("alice"), await self.chat("bob")
        ok = await bob.request("send", to={"group": "lobby"}, data="/who")
        answer = bob.messages[0]  # here before the ok
        self.assertEqual(answer, {"op": "msg", "id": ok["id"], "to": {"session": bob.session},
                                  "data": {"who": ["alice", "bob"]}})
        await alice.barrier()
        self.assertEqual(alice.messages, [])

    @run
    async def test_refusals(self):
        alice = await self.chat("alice")
        for data, message in (("/kick bob", "unknown command /kick"),
                              ({"x": 1}, "say it with text")):
            e = await self.assertFailure(
                alice.request("send", to={"group": "lobby"}, data=data), ServerError)
            self.assertEqual((e.code, e.frame["message"]), ("forbidden", message))
        await alice.request("send", to={"group": "lobby"}, data="still here")
        await alice.wait_for_messages(1)
        self.assertEqual(self.said(alice), [("alice", "still here")])

    @run
    async def test_leaving_tells_the_room(self):
        alice, bob = await self.chat("alice"), await self.chat("bob")
        await bob.disconnect()
        messages = await alice.wait_for_messages(1)
        self.assertEqual([m["data"] for m in messages], [{"left": "bob"}])
        self.assertNotIn("from", messages[0])


class HookTests(ServerTestCase):
    """Each hook, set live on a running server with ``set_app``."""

    def setUp(self):
        self.start_server(client_send="any")
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def logged(self, hook):
        return [(e["session"], e["user"]) for e in self.events if e.get("hook") == hook]

    @run
    async def test_exception_is_an_error_frame_and_the_session_keeps_working(self):
        def on_message(session, api, to, data):
            if data == "bad":
                raise ValueError("secret detail")
        self.engine.set_app(app(on_message=on_message))
        alice, bob = await self.client("alice"), await self.client("bob")
        e = await self.assertFailure(alice.request("send", to={"user": "bob"}, data="bad"),
                                     ServerError)
        self.assertEqual(e.frame, {"op": "error", "ref": e.frame["ref"], "code": "internal",
                                   "message": "internal error in the application"})
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 1)
        self.assertEqual(self.logged("on_message"), [(alice.session, "alice")])
        await alice.request("send", to={"user": "bob"}, data="good")
        await bob.request("send", to={"user": "alice"}, data="fine")
        self.assertEqual([m["data"] for m in await bob.wait_for_messages(1)], ["good"])
        self.assertEqual([m["data"] for m in await alice.wait_for_messages(1)], ["fine"])

    @run
    async def test_failing_connect_and_disconnect_hooks(self):
        async def on_connect(session, api):
            await deferLater(reactor, 0)
            raise KeyError("connect")

        def on_disconnect(session, api):
            raise KeyError("disconnect")
        self.engine.set_app(app(on_connect=on_connect, on_disconnect=on_disconnect))
        alice = await self.client("alice")
        self.assertEqual([f["op"] for f in alice.frames], ["welcome", "error", "welcome", "ok"])
        self.assertEqual(alice.frames[1]["code"], "internal")
        self.assertNotIn("ref", alice.frames[1])
        session = alice.session
        await alice.disconnect()
        await eventually(lambda: self.logged("on_disconnect"))
        self.assertEqual(self.logged("on_connect"), [(session, None)])
        self.assertEqual(self.logged("on_disconnect"), [(session, "alice")])
        self.assertEqual(len(self.flushLoggedErrors(KeyError)), 2)
        self.engine.set_app(None)
        bob = await self.client("bob")  # the server is fine
        self.assertEqual((await bob.barrier())["op"], "pong")

    @run
    async def test_connect_hook_uses_the_api_after_the_welcome(self):
        def on_connect(session, api):
            api.reply(session, "hello")
            return api.tag("new", session=session)
        self.engine.set_app(app(on_connect=on_connect))
        c = await self.client()
        await c.barrier()  # on_connect is done
        await self.push({"tag": "new"}, "to the new ones")
        await c.wait_for_messages(2)
        self.assertEqual(c.frames[0]["op"], "welcome")
        self.assertEqual([m["data"] for m in c.messages], ["hello", "to the new ones"])
        self.assertEqual(c.messages[0]["to"], {"session": c.session})

    @run
    async def test_auth_hook_refuses_or_picks_the_user(self):
        def on_auth(session, api, user, token):
            if user == "mallory":
                return False
            if user == "eve":
                raise Refused("banned")
            return "bob" if token == "t-bob" else None
        self.engine.set_app(app(on_auth=on_auth))
        for user, message in (("mallory", "refused by the application"), ("eve", "banned")):
            c = await self.client()
            e = await self.assertFailure(c.request("auth", user=user), ServerError)
            self.assertEqual((e.code, e.frame["message"]), ("unauthorized", message))
            await c.closed
            self.assertEqual(c.close_code, 1008)
        c = await self.client()
        await c.request("auth", token="t-bob")
        self.assertEqual(c.user, "bob")
        other = await self.client()
        e = await self.assertFailure(other.request("auth", token="nope"), ServerError)
        self.assertEqual(e.code, "unauthorized")  # the server's own rule for a token

    @run
    async def test_message_hook_outcomes(self):
        def on_message(session, api, to, data):
            return {"as is": None, "no": False, "upper": Deliver(data.upper()),
                    "redirect": Deliver("for carol", to={"user": "carol"}),
                    "quiet": Answer()}.get(data, True)
        self.engine.set_app(app(on_message=on_message))
        alice, bob, carol = (await self.client("alice"), await self.client("bob"),
                             await self.client("carol"))
        for data in ("as is", "upper", "redirect", "quiet", "yes"):
            ok = await alice.request("send", to={"user": "bob"}, data=data)
            self.assertEqual("id" in ok, data != "quiet")
        e = await self.assertFailure(alice.request("send", to={"user": "bob"}, data="no"),
                                     ServerError)
        self.assertEqual((e.code, e.frame["message"]),
                         ("forbidden", "refused by the application"))
        await bob.wait_for_messages(3)
        await carol.wait_for_messages(1)
        self.assertEqual([m["data"] for m in bob.messages], ["as is", "UPPER", "yes"])
        self.assertEqual([(m["data"], m["from"]["user"]) for m in carol.messages],
                         [("for carol", "alice")])

    @run
    async def test_bad_return_value_is_an_application_error(self):
        self.engine.set_app(app(on_message=lambda session, api, to, data: 42))
        alice = await self.client("alice")
        e = await self.assertFailure(alice.request("send", to={"user": "x"}, data=1),
                                     ServerError)
        self.assertEqual(e.code, "internal")
        self.assertEqual(len(self.flushLoggedErrors(TypeError)), 1)

    @run
    async def test_a_slow_hook_keeps_the_session_in_order(self):
        held = []

        def on_message(session, api, to, data):
            d = Deferred()
            held.append((data, d))
            return d
        self.engine.set_app(app(on_message=on_message))
        alice, bob = await self.client("alice"), await self.client("bob")
        first = alice.request("send", to={"user": "bob"}, data="first")
        second = alice.request("send", to={"user": "bob"}, data="second")
        pong = alice.barrier()
        await eventually(lambda: held)
        self.assertEqual([data for data, _ in held], ["first"])  # the rest waits
        held[0][1].callback(Deliver("FIRST"))
        await eventually(lambda: len(held) == 2)
        held[1][1].callback(None)
        await pong
        self.assertTrue(first.called and second.called)
        self.assertEqual([f["op"] for f in alice.frames[-3:]], ["ok", "ok", "pong"])
        self.assertEqual([m["data"] for m in await bob.wait_for_messages(2)],
                         ["FIRST", "second"])

    @run
    async def test_coroutine_hook(self):
        async def on_message(session, api, to, data):
            members = await api.members("room")
            return Deliver({"said": data, "room": len(members)})
        self.engine.set_app(app(on_message=on_message))
        alice, bob = await self.client("alice", ("room",)), await self.client("bob", ("room",))
        await alice.request("send", to={"group": "room"}, data="hi")
        messages = await bob.wait_for_messages(1)
        self.assertEqual(messages[0]["data"], {"said": "hi", "room": 2})

    @run
    async def test_set_app_swaps_a_reloaded_module_on_a_live_connection(self):
        path = os.path.abspath(self.mktemp() + ".py")
        source = "from pushsvc.app import Deliver\n\n" \
                 "def on_message(session, api, to, data):\n    return Deliver({!r})\n"
        with open(path, "w") as f:
            f.write(source.format("v1"))
        self.engine.set_app(load_app(path))
        alice, bob = await self.client("alice", ("g",)), await self.client("bob")
        await alice.request("send", to={"user": "bob"}, data="x")
        with open(path, "w") as f:
            f.write(source.format("v2"))
        self.engine.set_app(load_app(path))
        await alice.request("send", to={"user": "bob"}, data="x")
        self.engine.set_app(None)
        await alice.request("send", to={"user": "bob"}, data="x")
        self.assertEqual([m["data"] for m in await bob.wait_for_messages(3)],
                         ["v1", "v2", "x"])
        self.assertEqual(self.engine.registry.get(alice.session).groups, {"g"})


class WaitingLimitTests(EngineTestCase):
    def test_too_many_waiting_frames_are_refused(self):
        self.start(client_send="any")
        held = Deferred()
        results = iter([held])  # the first send waits, the others are answered at once
        self.engine.set_app(app(on_message=lambda *args: next(results, Answer())))
        s = self.open(user="alice")
        send = {"op": "send", "to": {"user": "bob"}, "data": 1}
        self.assertEqual(self.handle(s, {**send, "ref": 0}), [])
        for ref in range(1, MAX_WAITING + 1):
            self.assertEqual(self.handle(s, {**send, "ref": ref}), [])
        message = f"more than {MAX_WAITING} requests wait for the application"
        self.assertEqual(self.handle(s, {**send, "ref": "over"}),
                         [{"op": "error", "code": "rate_limited", "ref": "over",
                           "message": message}])
        held.callback(Answer())
        self.assertEqual(s.conn.take(), [{"op": "ok", "ref": ref}
                                         for ref in range(MAX_WAITING + 1)])
        self.assertEqual(self.engine.waiting, {})
