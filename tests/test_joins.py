"""Who may join what, in one process over real sockets: the secure default,
token claims and patterns, subscription tokens and their expiry, server-only
namespaces, the on_join hook, the members cap, presence and member events,
per-namespace send policies, and reloading the tables."""

from __future__ import annotations

import json
import os
from dataclasses import replace

from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import Site

from pushsvc.app import App
from pushsvc.client import ServerError
from pushsvc.config import ConfigError
from pushsvc.control import LocalControl
from pushsvc.metrics import local_values, render
from tests.helpers import run
from tests.test_tokens import NOW, OTHER_SECRET, SECRET, TokenServerTestCase, token

OPEN = {"": {"join": "open"}}


def sub_token(group: str, sub: str = "alice", exp: float = NOW + 60, **claims) -> str:
    """A subscription token for ``group``."""
    return token(sub=sub, exp=exp, group=group, **claims)


class JoinTestCase(TokenServerTestCase):
    """A token-mode server on a Clock; helpers to see refusals and frames."""

    async def alice(self, **claims):
        c = await self.open()
        await c.request("auth", token=token(**claims))
        return c

    async def refused(self, c, **fields) -> str:
        """The message of the ``forbidden`` a join with ``fields`` gets; the
        session stays open."""
        with self.assertRaises(ServerError) as caught:
            await c.request("join", **fields)
        self.assertEqual(caught.exception.code, "forbidden")
        await c.barrier()
        self.assertIsNone(c.close_code)
        return caught.exception.frame["message"]

    def groups(self, c) -> set[str]:
        return self.engine.registry.get(c.session).groups

    def others(self, c, start: int = 0) -> list[dict]:
        """The frames after ``start`` that are neither replies nor messages."""
        return [f for f in c.frames[start:] if f["op"] in ("joined", "left")]


class SecureDefaultTests(JoinTestCase):
    """With auth.mode token, a group is joinable only when a rule allows it."""

    @run
    async def test_the_claim_names_what_may_be_joined(self):
        """The issue's case: a token for lobby cannot read hr-salaries."""
        self.start()
        c = await self.alice(groups=["lobby"])
        self.assertEqual(self.groups(c), {"lobby"})
        self.assertEqual(await self.refused(c, group="hr-salaries"),
                         "joining group 'hr-salaries' needs a subscription token or a token "
                         "whose 'groups' claim names it")
        secret = await self.push({"group": "hr-salaries"}, "salaries")
        with self.assertRaises(ServerError) as caught:
            await c.request("send", to={"group": "hr-salaries"}, data="x")
        self.assertEqual(caught.exception.frame["message"],
                         "not a member of group 'hr-salaries'")
        await c.request("leave", group="lobby")
        await c.request("join", group="lobby")              # the claim lets it back
        lobby = await self.push({"group": "lobby"}, "hello")
        await c.wait_for_messages(1)
        await c.barrier()
        self.assertEqual([m["id"] for m in c.messages], [lobby])
        self.assertNotEqual(secret, lobby)

    @run
    async def test_patterns_allow_without_joining(self):
        self.start()
        c = await self.alice(groups=["team:7:*"])
        self.assertEqual(self.groups(c), set())
        await c.request("join", group="team:7:chat")
        await c.request("join", group="team:7:ops")
        self.assertEqual(await self.refused(c, group="team:8:chat"),
                         "joining group 'team:8:chat' needs a subscription token or a token "
                         "whose 'groups' claim names it")
        self.assertEqual(self.groups(c), {"team:7:chat", "team:7:ops"})

    @run
    async def test_anonymous_sessions_join_nothing_by_default(self):
        self.start()
        c = await self.open()
        self.assertIn("needs a subscription token", await self.refused(c, group="g"))

    @run
    async def test_development_mode_stays_open(self):
        self.start(auth_mode="none")
        c = await self.client(user="bob", groups=("hr-salaries", "team:1"))
        self.assertEqual(self.groups(c), {"hr-salaries", "team:1"})

    @run
    async def test_server_side_joins_ignore_the_rules(self):
        """HTTP joins and token claims join even in a server-only namespace."""
        self.start(namespaces={"staff": {"join": "server"}})
        c = await self.alice(groups=["staff:all"])
        self.assertEqual(self.groups(c), {"staff:all"})
        await c.request("leave", group="staff:all")
        self.assertEqual(await self.refused(c, group="staff:all"),
                         "only the server joins sessions to group 'staff:all' (namespace "
                         "'staff')")
        self.assertIn("only the server", await self.refused(
            c, group="staff:x", token=sub_token("staff:x")))
        self.assertEqual(await self.http("POST", "/api/join",
                                         {"session": c.session, "group": "staff:x"}),
                         (200, {"sessions": 1, "refused": 0}))
        self.assertEqual(self.groups(c), {"staff:x"})


class SubscriptionTokenTests(JoinTestCase):
    """A JWT for one group: sub = the session's user, group, exp."""

    @run
    async def test_a_token_for_the_group_joins_it(self):
        self.start()
        c = await self.alice()
        reply = await c.request("join", group="room:1", token=sub_token("room:1"))
        self.assertEqual(reply, {"op": "ok", "ref": 2})
        msg = await self.push({"group": "room:1"}, "in")
        await c.wait_for_messages(1)
        self.assertEqual(c.messages[0]["id"], msg)

    @run
    async def test_wrong_tokens_are_forbidden_with_the_reason(self):
        self.start()
        c = await self.alice()
        for fields, reason in [
                ({"token": sub_token("room:2")},
                 "the token is not for group 'room:1' (claim 'group')"),
                ({"token": sub_token("room:1", sub="bob")},
                 "the token is for another user (claim 'sub')"),
                ({"token": sub_token("room:1", exp=NOW - 60)}, "token expired"),
                ({"token": token(group="room:1", key=OTHER_SECRET)}, "bad token signature"),
                ({"token": token()}, "the token is not for group 'room:1' (claim 'group')")]:
            self.assertEqual(await self.refused(c, group="room:1", **fields), reason)
        self.assertEqual(self.groups(c), set())

    @run
    async def test_a_subscription_token_does_not_authenticate(self):
        self.start()
        c = await self.open()
        with self.assertRaises(ServerError) as caught:
            await c.request("auth", token=sub_token("room:1"))
        self.assertEqual(caught.exception.frame["message"],
                         "this is a subscription token (claim 'group'): send it with join, "
                         "not auth")
        d = await self.open()
        self.assertEqual(await self.refused(d, group="room:1", token=sub_token("room:1")),
                         "authenticate first: a subscription token is for a user")

    @run
    async def test_expiry_removes_the_member_unless_refreshed(self):
        self.start()
        c = await self.alice(exp=NOW + 3600)
        await c.request("join", group="room:1", token=sub_token("room:1", exp=NOW + 60))
        await c.request("join", group="room:2", token=sub_token("room:2", exp=NOW + 60))
        self.clock.advance(50)
        await c.request("join", group="room:2", token=sub_token("room:2", exp=NOW + 600))
        self.clock.advance(16)                               # past 60 s and the 5 s leeway
        await c.barrier()
        self.assertEqual(self.others(c), [{"op": "left", "group": "room:1",
                                           "reason": "token expired"}])
        self.assertEqual(self.groups(c), {"room:2"})
        msg = await self.push({"group": ["room:1", "room:2"]}, "x")
        only2 = await self.push({"group": "room:1"}, "y")
        await c.wait_for_messages(1)
        await c.barrier()
        self.assertEqual([m["id"] for m in c.messages], [msg])
        self.assertNotEqual(only2, msg)
        self.assertIsNone(c.close_code)
        await c.request("leave", group="room:2")             # its timer goes with it
        self.clock.advance(600)
        await c.barrier()
        self.assertEqual(len(self.others(c)), 1)
        self.assertTrue(self.engine.joins.is_empty() is False)  # claims are kept
        await c.disconnect()
        self.assertTrue(self.engine.joins.is_empty())


class HookTests(JoinTestCase):
    """join = "hook": the application's on_join decides."""

    def use_app(self, source: str) -> None:
        path = os.path.join(self.mktemp() + ".py")
        with open(path, "w") as f:
            f.write(source)
        from pushsvc.app import load_app
        self.engine.set_app(load_app(path))

    @run
    async def test_on_join_allows_refuses_and_attaches_data(self):
        self.start(namespaces={"vip": {"join": "hook", "presence": True}})
        self.use_app(
            "from pushsvc.app import Allow, Refused\n"
            "def on_join(session, api, group, data):\n"
            "    if group == 'vip:gold':\n"
            "        return Allow({'level': data['level'], 'user': session.user})\n"
            "    if group == 'vip:silver':\n"
            "        return True\n"
            "    raise Refused('members only')\n")
        c = await self.alice()
        await c.request("join", group="vip:gold", data={"level": 3})
        await c.request("join", group="vip:silver")
        self.assertEqual(await self.refused(c, group="vip:bronze"), "members only")
        self.assertEqual(self.groups(c), {"vip:gold", "vip:silver"})
        reply = await c.request("presence", group="vip:gold")
        self.assertEqual(reply["users"], {"alice": {"sessions": 1,
                                                    "data": {"level": 3, "user": "alice"}}})
        status, body = await self.http("GET", "/api/groups/vip:gold")
        self.assertEqual(body["members"], [{"session": c.session, "user": "alice",
                                            "data": {"level": 3, "user": "alice"}}])

    @run
    async def test_no_hook_refuses(self):
        self.start(namespaces={"vip": {"join": "hook"}})
        c = await self.alice()
        self.assertEqual(await self.refused(c, group="vip:1"),
                         "no application decides who joins group 'vip:1' (it has no "
                         "on_join hook)")

    @run
    async def test_a_failing_hook_is_an_internal_error(self):
        self.start(namespaces={"vip": {"join": "hook"}})
        self.engine.set_app(App("t", type("M", (), {"on_join": staticmethod(
            lambda session, api, group, data: 1 / 0)})))
        c = await self.alice()
        with self.assertRaises(ServerError) as caught:
            await c.request("join", group="vip:1")
        self.assertEqual(caught.exception.code, "internal")
        self.flushLoggedErrors(ZeroDivisionError)
        await c.barrier()
        self.assertIsNone(c.close_code)


class PresenceTests(JoinTestCase):
    """The presence op, member events and the members cap."""

    @run
    async def test_presence_counts_users_and_sessions(self):
        self.start(namespaces=OPEN)
        a1, a2 = await self.alice(groups=["g"]), await self.alice(groups=["g"])
        b = await self.open()
        await b.request("auth", token=token(sub="bob", groups=["g"]))
        anonymous = await self.open()
        await anonymous.request("join", group="g")
        reply = await b.request("presence", group="g")
        self.assertEqual(reply, {"op": "presence", "ref": 2, "group": "g", "sessions": 4,
                                 "anonymous": 1, "users": {"alice": {"sessions": 2},
                                                           "bob": {"sessions": 1}}})
        await a2.disconnect()
        reply = await a1.request("presence", group="g")
        self.assertEqual((reply["sessions"], reply["users"]["alice"]), (3, {"sessions": 1}))

    @run
    async def test_presence_is_for_members_where_it_is_on(self):
        self.start(namespaces={"": {"join": "open"}, "quiet": {"join": "open",
                                                                "presence": False}})
        c = await self.alice()
        with self.assertRaises(ServerError) as caught:
            await c.request("presence", group="g")
        self.assertEqual(caught.exception.frame["message"], "not a member of group 'g'")
        await c.request("join", group="quiet:1")
        with self.assertRaises(ServerError) as caught:
            await c.request("presence", group="quiet:1")
        self.assertEqual(caught.exception.frame["message"], "presence is off for group 'quiet:1'")

    @run
    async def test_members_hear_of_joins_and_leaves(self):
        self.start(namespaces={"": {"join": "open", "events": True},
                               "quiet": {"join": "open"}})
        a = await self.alice(groups=["g", "quiet:1"])
        b = await self.open()
        await b.request("auth", token=token(sub="bob"))
        await b.request("join", group="g")
        await b.request("join", group="quiet:1")
        await b.barrier()
        await a.barrier()
        own = {"op": "joined", "group": "g", "session": a.session, "user": "alice"}
        joined = {"op": "joined", "group": "g", "session": b.session, "user": "bob"}
        self.assertEqual(self.others(a), [own, joined])     # the joiner hears its own
        self.assertEqual(self.others(b), [joined])
        await b.request("leave", group="g")
        await b.request("join", group="g")
        self.assertEqual(self.others(b), [joined, joined])  # not its own left: it is out
        await b.disconnect()
        await a.barrier()
        left = {"op": "left", "group": "g", "session": b.session, "user": "bob"}
        self.assertEqual(self.others(a), [own, joined, left, joined, left])
        self.assertEqual(self.engine.registry.group_members("g"),
                         {self.engine.registry.get(a.session)})

    @run
    async def test_the_members_cap(self):
        self.start(namespaces={"": {"join": "open", "max_members": 2}})
        a, b, c = await self.alice(), await self.alice(), await self.alice()
        await a.request("join", group="g")
        await b.request("join", group="g")
        self.assertEqual(await self.refused(c, group="g"), "group 'g' is full (2 members)")
        await a.request("join", group="g")                  # a member is not counted twice
        await b.request("leave", group="g")
        await c.request("join", group="g")
        self.assertEqual(len(self.engine.registry.group_members("g")), 2)


class SendPolicyTests(JoinTestCase):
    """client_send per namespace, over real sockets."""

    @run
    async def test_namespaces_decide_who_sends_to_their_groups(self):
        self.start(namespaces={"": {"join": "open"}, "feed": {"join": "open",
                                                               "client_send": "none"},
                               "inbox": {"client_send": "any"}})
        c = await self.alice(groups=["feed:1", "chat"])
        with self.assertRaises(ServerError) as caught:
            await c.request("send", to={"group": "feed:1"}, data="x")
        self.assertEqual(caught.exception.frame["message"],
                         "clients may not send to group 'feed:1' (namespace 'feed')")
        reader = await self.open()
        await reader.request("auth", token=token(sub="bob", groups=["inbox:bob"]))
        reply = await c.request("send", to={"group": "inbox:bob"}, data="hi")   # not a member
        await reader.wait_for_messages(1)
        self.assertEqual(reader.messages[0]["id"], reply["id"])


class ReloadTests(JoinTestCase):
    """The tables are reloadable: new joins follow the new rules."""

    @run
    async def test_a_reload_changes_the_rules(self):
        self.start()
        c = await self.alice()
        self.assertIn("needs a subscription token", await self.refused(c, group="pub:1"))
        self.server.reload(replace(self.server.settings,
                                   namespaces={"pub": {"join": "open"}}))
        await c.request("join", group="pub:1")
        self.assertEqual(self.groups(c), {"pub:1"})


    @run
    async def test_a_bad_table_fails_the_reload_and_keeps_the_rules(self):
        path = self.mktemp()

        def write(table: str) -> None:
            with open(path, "w") as f:
                f.write(f'[auth]\nmode = "token"\njwt_secret = "{SECRET}"\n'
                        f'[namespaces.pub]\n{table}\n')
        write('join = "open"')
        self.start(config_path=path, namespaces={"pub": {"join": "open"}})
        write('join = "opne"')
        failure = self.failureResultOf(LocalControl(self.server).reload(), ConfigError)
        self.assertEqual(str(failure.value), "namespaces.pub.join: must be one of open, "
                                             "token, proxy, hook, server; got 'opne'")
        c = await self.alice()
        await c.request("join", group="pub:1")              # still open
        write('join = "server"')
        self.successResultOf(LocalControl(self.server).reload())
        self.assertIn("only the server", await self.refused(c, group="pub:2"))


class Backend(Resource):
    """A backend for the proxy: records each document, answers with
    ``answer(document)`` (a dict, or an int status with an empty body)."""

    isLeaf = True

    def __init__(self, answer):
        super().__init__()
        self.answer = answer
        self.documents: list[dict] = []
        self.headers: list = []

    def render_POST(self, request):
        document = json.loads(request.content.read())
        self.documents.append(document)
        self.headers.append(request.getHeader("authorization"))
        answer = self.answer(document)
        if isinstance(answer, int):
            request.setResponseCode(answer)
            return b""
        request.setHeader("content-type", "application/json")
        return json.dumps(answer).encode()


class ProxyTests(JoinTestCase):
    """join = "proxy" and client_send = "proxy": a real backend over HTTP decides."""

    def backend(self, answer) -> tuple[Backend, str]:
        resource = Backend(answer)
        port = reactor.listenTCP(0, Site(resource), interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        return resource, f"http://127.0.0.1:{port.getHost().port}/decide"

    def start_with(self, url: str, **overrides):
        overrides.setdefault("namespaces", {"team": {"join": "proxy",
                                                     "client_send": "proxy"}})
        self.start(proxy_join_url=url, proxy_send_url=url, proxy_secret="b4ck3nd",
                   **overrides)

    def exposition(self) -> str:
        """What GET /metrics shows for this one-process server."""
        return render(local_values(self.engine))[0].decode()

    @staticmethod
    def rule(document):
        if document["event"] == "send":
            return ({"allow": True, "data": {"checked": document["data"]}}
                    if document["data"] != "rude" else {"allow": False, "reason": "be nice"})
        if document["group"] == "team:7":
            return {"allow": True, "data": {"role": "lead"}}
        return {"allow": False, "reason": f"{document['user']} is not in {document['group']}"}

    @run
    async def test_the_backend_decides_joins_and_sends(self):
        backend, url = self.backend(self.rule)
        self.start_with(url)
        c = await self.alice(role="admin")
        await c.request("join", group="team:7", data={"device": "phone"})
        self.assertEqual(await self.refused(c, group="team:8"), "alice is not in team:8")
        self.assertEqual(self.groups(c), {"team:7"})
        document = backend.documents[0]
        self.assertEqual({k: document[k] for k in ("event", "session", "user", "group",
                                                   "namespace", "data")},
                         {"event": "join", "session": c.session, "user": "alice",
                          "group": "team:7", "namespace": "team", "data": {"device": "phone"}})
        self.assertEqual((document["claims"]["sub"], document["claims"]["role"]),
                         ("alice", "admin"))
        self.assertEqual(backend.headers[0], "Bearer b4ck3nd")
        reply = await c.request("presence", group="team:7")
        self.assertEqual(reply["users"], {"alice": {"sessions": 1, "data": {"role": "lead"}}})

        reply = await c.request("send", to={"group": "team:7"}, data="hello")
        await c.wait_for_messages(1)
        self.assertEqual((c.messages[0]["id"], c.messages[0]["data"]),
                         (reply["id"], {"checked": "hello"}))
        with self.assertRaises(ServerError) as caught:
            await c.request("send", to={"group": "team:7"}, data="rude")
        self.assertEqual(caught.exception.frame["message"], "be nice")
        text = self.exposition()
        self.assertIn('pushsvc_proxy_requests_total{result="allow"} 2.0', text)
        self.assertIn('pushsvc_proxy_requests_total{result="deny"} 2.0', text)
        self.assertIn("pushsvc_proxy_round_trip_seconds_count 4.0", text)

    @run
    async def test_a_failing_backend_denies_or_allows_as_configured(self):
        backend, url = self.backend(lambda document: 500)
        self.start_with(url)
        c = await self.alice()
        self.assertEqual(await self.refused(c, group="team:1"),
                         "the backend could not decide: the backend answered HTTP 500")
        self.flushLoggedErrors()
        self.server.reload(replace(self.server.settings, proxy_on_error="allow"))
        await c.request("join", group="team:1")
        self.assertEqual(self.groups(c), {"team:1"})
        self.assertIn('pushsvc_proxy_requests_total{result="error"} 2.0', self.exposition())

    @run
    async def test_claims_and_subscription_tokens_skip_the_backend(self):
        backend, url = self.backend(self.rule)
        self.start_with(url)
        c = await self.alice(groups=["team:1"])
        await c.request("join", group="team:2", token=sub_token("team:2"))
        self.assertEqual(self.groups(c), {"team:1", "team:2"})
        self.assertEqual(backend.documents, [])
