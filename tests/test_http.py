"""The HTTP API over real loopback sockets: push, API keys, routing, commands.

Every answer is checked whole: status code and the full JSON body.
"""

from __future__ import annotations

import io
import json
from dataclasses import replace
from typing import Any

import twisted.web.http
from twisted.internet import reactor
from twisted.internet.defer import succeed
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IBodyProducer
from zope.interface import implementer

from pushsvc.counters import COUNTERS
from tests.helpers import ServerTestCase, run


def error(code: str, message: str) -> dict[str, Any]:
    """The JSON body of an HTTP error answer."""
    return {"error": {"code": code, "message": message}}


BAD_TARGET = error("bad_request", "give exactly one of 'user' or 'session'")


def push_body(size: int) -> bytes:
    """A valid push body (to everyone) of exactly ``size`` bytes."""
    empty = json.dumps({"to": {"all": True}, "data": ""}).encode()
    return json.dumps({"to": {"all": True}, "data": "x" * (size - len(empty))}).encode()


@implementer(IBodyProducer)
class ChunkedBody:
    """A request body of unknown length, so the Agent sends it chunked, one
    HTTP chunk per item of ``chunks``."""

    length = UNKNOWN_LENGTH

    def __init__(self, chunks: list[bytes]):
        self.chunks = chunks

    def startProducing(self, consumer):
        for chunk in self.chunks:
            consumer.write(chunk)
        return succeed(None)

    def pauseProducing(self):
        pass

    def resumeProducing(self):
        pass

    def stopProducing(self):
        pass


class HttpTestCase(ServerTestCase):
    async def exchange(self, method: str, path: str, producer=None,
                       headers: dict[str, str] | None = None):
        """One request; returns (response, parsed JSON body) so headers can be read."""
        hdrs = Headers({k: [v] for k, v in (headers or {}).items()})
        response = await Agent(reactor).request(
            method.encode(), (self.base + path).encode(), hdrs, producer)
        text = await readBody(response)
        return response, json.loads(text) if text else None

    async def assertAnswer(self, method: str, path: str, body: Any,
                           status: int, answer: Any, **kw: Any) -> None:
        self.assertEqual(await self.http(method, path, body, **kw), (status, answer))

    async def assertBadPush(self, to: Any, status: int, answer: Any) -> None:
        await self.assertAnswer("POST", "/api/push", {"to": to, "data": 1}, status, answer)


class PushTests(HttpTestCase):
    def setUp(self):
        self.start_server(max_message_bytes=1024, max_targets=3)

    @run
    async def test_push_answers_202_with_the_message_id(self):
        c = await self.client(user="alice", groups=("g",))
        status, body = await self.http("POST", "/api/push",
                                       {"to": {"group": "g"}, "data": {"n": 1}})
        self.assertEqual((status, list(body)), (202, ["id"]))
        await c.barrier()
        self.assertEqual(c.messages, [{"op": "msg", "pos": 1, "id": body["id"],
                                       "to": {"group": "g"}, "data": {"n": 1}}])

    @run
    async def test_answers_are_json_and_not_cached(self):
        response, body = await self.exchange("GET", "/healthz")
        self.assertEqual(response.headers.getRawHeaders(b"content-type"),
                         [b"application/json"])
        self.assertEqual(response.headers.getRawHeaders(b"cache-control"), [b"no-store"])

    @run
    async def test_data_may_be_null(self):
        c = await self.client(groups=("g",))
        msg_id = await self.push({"group": "g"}, None)
        await c.barrier()
        self.assertEqual([(m["id"], m["data"]) for m in c.messages], [(msg_id, None)])

    @run
    async def test_content_type_is_not_checked(self):
        # curl -d sends application/x-www-form-urlencoded unless told otherwise.
        for content_type in ("application/x-www-form-urlencoded", "text/plain"):
            status, body = await self.http("POST", "/api/push", {"to": {"all": True}, "data": 1},
                                           headers={"Content-Type": content_type})
            self.assertEqual((status, list(body)), (202, ["id"]), content_type)

    @run
    async def test_body_not_json(self):
        for raw in (b"{nope", b"", b"NaN", b"\xff\xfe\xfd"):
            self.assertEqual(await self.http("POST", "/api/push", raw=raw),
                             (400, error("bad_request", "not valid JSON")), raw)

    @run
    async def test_body_not_an_object(self):
        for body in ([{"to": {"all": True}, "data": 1}], "x", 3, None):
            await self.assertAnswer("POST", "/api/push", None, 400,
                                    error("bad_request", "the body must be a JSON object"),
                                    raw=json.dumps(body).encode())

    @run
    async def test_missing_data(self):
        await self.assertAnswer("POST", "/api/push", {"to": {"all": True}}, 400,
                                error("bad_request", "the body needs 'data'"))

    @run
    async def test_bad_addresses(self):
        not_object = error("bad_request", "'to' must be a non-empty object")
        cases = [
            ({"room": "g"}, error("bad_request", "'to' has unknown key 'room'")),
            ({}, not_object),
            ([], not_object),
            ("g", not_object),
            (None, not_object),
            ({"all": False}, error("bad_request", "'to.all' must be true")),
            ({"group": ""}, error("bad_request", "'to.group' must be a non-empty string")),
            ({"user": 5}, error("bad_request", "'to.user' must be a non-empty string")),
            ({"tag": []}, error("bad_request", "'to.tag' is an empty list")),
            ({"session": "x" * 201},
             error("bad_request", "'to.session' is longer than 200 characters")),
            ({"group": ["g", "\ud800"]},  # a lone surrogate: a str with no UTF-8 form
             error("bad_request", "'to.group' must be valid Unicode (it holds a lone surrogate)")),
        ]
        for to, answer in cases:
            await self.assertBadPush(to, 400, answer)
        await self.assertAnswer("POST", "/api/push", {"data": 1}, 400, not_object)

    @run
    async def test_too_many_targets_is_413(self):
        await self.assertBadPush(
            {"group": ["a", "b"], "user": ["c", "d"]}, 413,
            error("too_large", "'to' names 4 targets; the limit is 3"))
        # At the limit, and repeated names counted once, it goes through.
        for to in ({"group": ["a", "b"], "tag": "c"}, {"group": ["a", "a", "b", "b", "a"]}):
            status, _ = await self.http("POST", "/api/push", {"to": to, "data": 1})
            self.assertEqual(status, 202, to)

    @run
    async def test_body_at_the_limit_is_accepted(self):
        c = await self.client()
        status, body = await self.http("POST", "/api/push", raw=push_body(1024))
        self.assertEqual(status, 202, body)
        await c.barrier()
        self.assertEqual([len(m["data"]) for m in c.messages],
                         [1024 - len(push_body(0))])

    @run
    async def test_body_over_the_limit_is_413_then_the_server_keeps_serving(self):
        c = await self.client()
        too_large = error("too_large", "the body is larger than 1024 bytes")
        for raw in (push_body(1025), push_body(1024 * 1024)):
            self.assertEqual(await self.http("POST", "/api/push", raw=raw), (413, too_large))
        msg_id = await self.push({"all": True}, "after")
        await c.barrier()
        self.assertEqual([m["id"] for m in c.messages], [msg_id])

    @run
    async def test_chunked_body(self):
        c = await self.client()
        small = push_body(1024)
        response, body = await self.exchange(
            "POST", "/api/push", ChunkedBody([small[:500], small[500:]]))
        self.assertEqual((response.code, list(body)), (202, ["id"]))

        # Every chunk is small; together they pass the limit.
        big = push_body(1025)
        response, body = await self.exchange(
            "POST", "/api/push", ChunkedBody([big[i:i + 100] for i in range(0, 1025, 100)]))
        self.assertEqual((response.code, body),
                         (413, error("too_large", "the body is larger than 1024 bytes")))

        msg_id = await self.push({"all": True}, "after")
        await c.barrier()
        self.assertEqual(len(c.messages), 2)
        self.assertEqual(c.messages[-1]["id"], msg_id)

    @run
    async def test_command_body_over_the_limit_is_413(self):
        await self.assertAnswer("POST", "/api/join", None, 413,
                                error("too_large", "the body is larger than 1024 bytes"),
                                raw=b" " * 1025)


class LargeBodyTests(HttpTestCase):
    """Bodies larger than Twisted keeps in memory by itself (100 KB), up to the limit."""

    def setUp(self):
        self.start_server(max_batch_bytes=256 * 1024)
        # Twisted's own choice of where a body goes: a temporary file when it is
        # chunked or 100 KB and more.  LimitedRequest must never ask it.
        self.asked = []
        self.patch(twisted.web.http, "_getContentFile", self.ask)

    def ask(self, length):
        self.asked.append(length)
        return io.BytesIO()

    @staticmethod
    def batch(size: int) -> bytes:
        """A batch of four 50,000-character pushes to everyone, padded with
        spaces to ``size`` bytes."""
        body = json.dumps({"messages": [{"to": {"all": True}, "data": "x" * 50000}] * 4})
        return body.encode() + b" " * (size - len(body))

    @run
    async def test_large_bodies_are_kept_in_memory(self):
        c = await self.client()
        body = self.batch(200 * 1024)
        response, answer = await self.exchange("POST", "/api/batch",
                                               FileBodyProducer(io.BytesIO(body)))
        self.assertEqual((response.code, len(answer["ids"])), (202, 4))
        response, answer = await self.exchange(
            "POST", "/api/batch", ChunkedBody([body[i:i + 8192]
                                               for i in range(0, len(body), 8192)]))
        self.assertEqual((response.code, len(answer["ids"])), (202, 4))
        too_large = (413, error("too_large", f"the body is larger than {256 * 1024} bytes"))
        for producer in (FileBodyProducer(io.BytesIO(self.batch(256 * 1024 + 1))),
                         ChunkedBody([self.batch(256 * 1024 + 1)])):
            response, answer = await self.exchange("POST", "/api/batch", producer)
            self.assertEqual((response.code, answer), too_large)
        await c.barrier()
        self.assertEqual([m["data"] for m in c.messages], ["x" * 50000] * 8)
        self.assertEqual(self.asked, [])


class BatchTests(HttpTestCase):
    def setUp(self):
        self.start_server(max_message_bytes=1024, max_batch_messages=3,
                          max_batch_bytes=4096)

    @run
    async def test_batch_delivers_every_message_in_order(self):
        a = await self.client(user="a", groups=("g",))
        b = await self.client(user="b")
        status, body = await self.http("POST", "/api/batch", {"messages": [
            {"to": {"user": "a"}, "data": 1},
            {"to": {"group": "g", "user": "b"}, "data": 2},
            {"to": {"user": "b"}, "data": 3}]})
        self.assertEqual(status, 202, body)
        self.assertEqual(len(set(body["ids"])), 3)
        await a.barrier()
        await b.barrier()
        ids = body["ids"]
        self.assertEqual([(m["id"], m["data"]) for m in a.messages], [(ids[0], 1), (ids[1], 2)])
        self.assertEqual([(m["id"], m["data"]) for m in b.messages], [(ids[1], 2), (ids[2], 3)])

    @run
    async def test_bad_batches_send_nothing(self):
        c = await self.client(user="a")
        good = {"to": {"user": "a"}, "data": "ok"}
        cases = [
            ({"messages": []}, 400, "bad_request",
             'the body must be {"messages": [...]} with at least one message'),
            ([good], 400, "bad_request",
             'the body must be {"messages": [...]} with at least one message'),
            ({"messages": [good] * 4}, 413, "too_large", "4 messages; the limit is 3"),
            ({"messages": [good, {"to": {"bogus": 1}, "data": 1}]}, 400, "bad_request",
             "messages[1]: 'to' has unknown key 'bogus'"),
            ({"messages": [good, good, 7]}, 400, "bad_request",
             "messages[2] must be a JSON object"),
            ({"messages": [good, {"to": {"all": True}}]}, 400, "bad_request",
             "messages[1] needs 'data'"),
            ({"messages": [good, {"to": {"all": True}, "data": "x" * 1100}]}, 413,
             "too_large", "messages[1]: 'data' is 1102 bytes encoded; the limit is 1024"),
            ({"messages": [{"to": {"all": True}, "data": "x" * 5000}]}, 413,
             "too_large", "the body is larger than 4096 bytes"),
        ]
        for body, status, code, message in cases:
            self.assertEqual(await self.http("POST", "/api/batch", body),
                             (status, error(code, message)), body)
        await c.barrier()
        self.assertEqual(c.messages, [])


class ApiKeyTests(HttpTestCase):
    def setUp(self):
        self.start_server(api_keys=["k1", "k2"])

    async def assertRefused(self, headers: dict[str, str], message: str,
                            challenge: bytes = b'Bearer realm="pushsvc"') -> None:
        response, body = await self.exchange("POST", "/api/push", headers=headers)
        self.assertEqual((response.code, body), (401, error("unauthorized", message)),
                         headers)
        self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"), [challenge])

    @run
    async def test_missing_or_malformed_authorization(self):
        hint = "send 'Authorization: Bearer <api key>'"
        for headers in ({}, {"Authorization": "Basic azE6"}, {"Authorization": "Bearer"},
                        {"Authorization": "k1"}, {"Authorization": "Bearer "}):
            await self.assertRefused(headers, hint)

    @run
    async def test_wrong_key(self):
        for key in ("k3", "k", "k1k2", "K1", "k1 k2"):
            await self.assertRefused({"Authorization": f"Bearer {key}"},
                                     "the API key is not valid",
                                     b'Bearer realm="pushsvc", error="invalid_token"')
        self.assertEqual(self.engine.counters["http_bad_key"], 5)

    @run
    async def test_every_configured_key_works(self):
        c = await self.client()
        ids = [await self.push({"all": True}, key, headers={"Authorization": auth})
               for key, auth in (("k1", "Bearer k1"), ("k2", "Bearer k2"),
                                 ("scheme", "bearer k1"))]
        await c.barrier()
        self.assertEqual([(m["id"], m["data"]) for m in c.messages],
                         list(zip(ids, ("k1", "k2", "scheme"))))

    @run
    async def test_every_api_route_needs_a_key(self):
        refused = (401, error("unauthorized", "send 'Authorization: Bearer <api key>'"))
        for method, path in (("GET", "/api/groups"), ("GET", "/api/groups/g"),
                             ("GET", "/api/users/u"), ("GET", "/api/stats"),
                             ("POST", "/api/join"), ("POST", "/api/destroy")):
            self.assertEqual(await self.http(method, path, {"group": "g", "user": "u"}),
                             refused, path)
        counts = {"sessions": 0, "users": 0, "groups": 0, **dict.fromkeys(COUNTERS, 0),
                  "http_bad_key": 6}
        self.assertEqual(
            await self.http("GET", "/api/stats", headers={"Authorization": "Bearer k2"}),
            (200, {**counts, "workers": [{"worker": "test.0", **counts}]}))

    @run
    async def test_a_wrong_path_below_a_route_needs_a_key(self):
        # The key is checked first, so only with one does the path get its 404.
        for path in ("/api/users", "/api/users/u/x", "/api/push/x"):
            await self.assertAnswer(
                "GET", path, None, 401,
                error("unauthorized", "send 'Authorization: Bearer <api key>'"))
            await self.assertAnswer("GET", path, None, 404,
                                    error("not_found", f"no such route: {path}"),
                                    headers={"Authorization": "Bearer k1"})

    @run
    async def test_a_read_only_key_may_get_but_not_post(self):
        self.server.reload(replace(self.server.settings, api_read_keys=["r1"]))
        read = {"Authorization": "Bearer r1"}
        await self.assertAnswer("GET", "/api/groups", None, 200, {"groups": {}}, headers=read)
        c = await self.client(user="u")
        for path, body in (("/api/push", {"to": {"all": True}, "data": 1}),
                           ("/api/kick", {"user": "u"}), ("/api/nope-below", None)):
            response, answer = await self.exchange(
                "POST", path if path != "/api/nope-below" else "/api/push/x",
                FileBodyProducer(io.BytesIO(json.dumps(body).encode())), headers=read)
            self.assertEqual((response.code, answer),
                             (403, error("forbidden", "this API key may only read (GET)")))
            self.assertEqual(response.headers.getRawHeaders(b"www-authenticate"),
                             [b'Bearer realm="pushsvc", error="insufficient_scope"'])
        # A full key still writes; the read key wrote nothing.
        msg_id = await self.push({"all": True}, "ok", headers={"Authorization": "Bearer k1"})
        await c.barrier()
        self.assertEqual([m["id"] for m in c.messages], [msg_id])
        self.assertEqual((self.engine.counters["http_forbidden"],
                          self.engine.counters["http_bad_key"]), (3, 0))

    @run
    async def test_read_keys_alone_turn_keys_on(self):
        self.server.reload(replace(self.server.settings, api_keys=[], api_read_keys=["r1"]))
        await self.assertAnswer("GET", "/api/groups", None, 401,
                                error("unauthorized", "send 'Authorization: Bearer <api key>'"))
        await self.assertAnswer("GET", "/api/groups", None, 200, {"groups": {}},
                                headers={"Authorization": "Bearer r1"})
        await self.assertAnswer("POST", "/api/push", {"to": {"all": True}, "data": 1}, 403,
                                error("forbidden", "this API key may only read (GET)"),
                                headers={"Authorization": "Bearer r1"})

    @run
    async def test_healthz_and_unknown_routes_need_no_key(self):
        await self.assertAnswer("GET", "/healthz", None, 200, {"status": "ok", "sessions": 0})
        await self.assertAnswer("GET", "/nope", None, 404,
                                error("not_found", "no such route: /nope"))


class RoutingTests(HttpTestCase):
    def setUp(self):
        self.start_server()

    @run
    async def test_unknown_routes_are_404(self):
        for path in ("/nope", "/api", "/api/", "/api/nope", "/healthz/x",  # "/": the demo
                     "/api/push/x", "/api/stats/x", "/api/groups/g/x", "/api/users",
                     "/api/users/", "/api/users/u/x", "/api/join/x"):
            await self.assertAnswer("GET", path, None, 404,
                                    error("not_found", f"no such route: {path}"))

    @run
    async def test_wrong_method_is_405(self):
        for method, path, allowed in (
                ("GET", "/api/push", b"POST"), ("GET", "/api/join", b"POST"),
                ("PUT", "/api/push", b"POST"), ("DELETE", "/api/groups/g", b"GET"),
                ("HEAD", "/api/groups", b"GET"), ("POST", "/api/users/u", b"GET"),
                ("POST", "/api/stats", b"GET"), ("POST", "/healthz", b"GET")):
            response, body = await self.exchange(method, path)
            self.assertEqual(response.code, 405, path)
            self.assertEqual(response.headers.getRawHeaders(b"allow"), [allowed], path)
            if method != "HEAD":
                self.assertEqual(body, error("method_not_allowed",
                                             f"{method} is not allowed here"), path)

    @run
    async def test_path_not_utf8_is_400(self):
        await self.assertAnswer("GET", "/api/users/%FF%FE", None, 400,
                                error("bad_request", "the path is not valid UTF-8"))

    @run
    async def test_names_in_the_path_are_percent_decoded(self):
        c = await self.client(user="café/1", groups=("a b",))
        status, body = await self.http("GET", "/api/users/caf%C3%A9%2F1")
        self.assertEqual((status, body["user"], body["online"]), (200, "café/1", True))
        await self.assertAnswer("GET", "/api/groups/a%20b", None, 200,
                                {"group": "a b",
                                 "members": [{"session": c.session, "user": "café/1"}]})

    @run
    async def test_names_in_the_path_are_checked(self):
        await self.assertAnswer("GET", "/api/users/" + "u" * 201, None, 400,
                                error("bad_request", "'user' is longer than 200 characters"))
        await self.assertAnswer("GET", "/api/groups/" + "g" * 201, None, 400,
                                error("bad_request", "'group' is longer than 200 characters"))

    @run
    async def test_healthz(self):
        await self.assertAnswer("GET", "/healthz", None, 200, {"status": "ok", "sessions": 0})
        await self.client()
        await self.assertAnswer("GET", "/healthz", None, 200, {"status": "ok", "sessions": 1})


class CommandTests(HttpTestCase):
    def setUp(self):
        self.start_server(max_groups_per_session=2)

    async def command(self, name: str, body: Any, answer: dict[str, Any]) -> None:
        await self.assertAnswer("POST", f"/api/{name}", body, 200, answer)

    async def received(self, clients, to: dict[str, Any]) -> list[bool]:
        """Push to ``to``; which of ``clients`` got it (each exactly once)."""
        msg_id = await self.push(to, "probe")
        got = []
        for c in clients:
            await c.barrier()
            ids = [m["id"] for m in c.messages]
            self.assertLessEqual(ids.count(msg_id), 1)
            got.append(msg_id in ids)
        return got

    @staticmethod
    def notices(c) -> list[dict[str, Any]]:
        """The joined/left frames ``c`` got from the server."""
        return [f for f in c.frames if f["op"] in ("joined", "left")]

    @run
    async def test_join_and_leave_a_users_sessions(self):
        a1, a2 = await self.client(user="alice"), await self.client(user="alice")
        bob = await self.client(user="bob", groups=("g",))
        await self.command("join", {"user": "alice", "group": "g"},
                           {"sessions": 2, "refused": 0})
        for c in (a1, a2):
            await c.barrier()
            self.assertEqual(self.notices(c), [{"op": "joined", "group": "g",
                                                "reason": "server"}])
        self.assertEqual(self.notices(bob), [])
        self.assertEqual(await self.received([a1, a2, bob], {"group": "g"}),
                         [True, True, True])
        # Already members: nothing changes and nobody is told again.
        await self.command("join", {"user": "alice", "group": "g"},
                           {"sessions": 0, "refused": 0})

        await self.command("leave", {"user": "alice", "group": "g"}, {"sessions": 2})
        for c in (a1, a2):
            await c.barrier()
            self.assertEqual(self.notices(c)[1:], [{"op": "left", "group": "g",
                                                    "reason": "server"}])
        self.assertEqual(await self.received([a1, a2, bob], {"group": "g"}),
                         [False, False, True])
        await self.command("leave", {"user": "alice", "group": "g"}, {"sessions": 0})

    @run
    async def test_join_and_leave_one_session(self):
        a1, a2 = await self.client(user="alice"), await self.client(user="alice")
        await self.command("join", {"session": a2.session, "group": "g"},
                           {"sessions": 1, "refused": 0})
        self.assertEqual(await self.received([a1, a2], {"group": "g"}), [False, True])
        await self.command("leave", {"session": a2.session, "group": "g"}, {"sessions": 1})
        self.assertEqual(await self.received([a1, a2], {"group": "g"}), [False, False])

    @run
    async def test_unknown_user_or_session_is_zero_sessions(self):
        await self.command("join", {"user": "nobody", "group": "g"},
                           {"sessions": 0, "refused": 0})
        await self.command("join", {"session": "test.0.x.1", "group": "g"},
                           {"sessions": 0, "refused": 0})
        await self.command("leave", {"session": "not-an-id", "group": "g"}, {"sessions": 0})
        await self.command("tag", {"user": "nobody", "tag": "t"}, {"sessions": 0})

    @run
    async def test_join_beyond_the_group_limit_is_refused(self):
        full = await self.client(user="alice", groups=("a", "b"))
        room = await self.client(user="alice", groups=("a",))
        await self.command("join", {"user": "alice", "group": "c"},
                           {"sessions": 1, "refused": 1})
        await full.barrier()
        self.assertEqual(self.notices(full), [])
        self.assertEqual(await self.received([full, room], {"group": "c"}), [False, True])
        # A session already in the group is neither joined nor refused.
        await self.command("join", {"user": "alice", "group": "a"},
                           {"sessions": 0, "refused": 0})

    @run
    async def test_destroy_a_group(self):
        a = await self.client(user="alice", groups=("g", "other"))
        b = await self.client(groups=("g",))
        await self.command("destroy", {"group": "g"}, {"sessions": 2})
        for c in (a, b):
            await c.barrier()
            self.assertEqual(self.notices(c), [{"op": "left", "group": "g",
                                                "reason": "destroyed"}])
        await self.assertAnswer("GET", "/api/groups", None, 200, {"groups": {"other": 1}})
        self.assertEqual(await self.received([a, b], {"group": "g"}), [False, False])
        await self.command("destroy", {"group": "g"}, {"sessions": 0})

    @run
    async def test_tag_and_untag(self):
        a1, a2 = await self.client(user="alice"), await self.client(user="alice")
        bob, carol = await self.client(user="bob"), await self.client(user="carol")
        everyone = [a1, a2, bob, carol]
        await self.command("tag", {"user": "alice", "tag": "vip"}, {"sessions": 2})
        await self.command("tag", {"session": bob.session, "tag": "vip"}, {"sessions": 1})
        await self.command("tag", {"user": "alice", "tag": "vip"}, {"sessions": 0})
        self.assertEqual(await self.received(everyone, {"tag": "vip"}),
                         [True, True, True, False])
        await self.command("untag", {"user": "alice", "tag": "vip"}, {"sessions": 2})
        self.assertEqual(await self.received(everyone, {"tag": "vip"}),
                         [False, False, True, False])
        await self.command("untag", {"session": bob.session, "tag": "vip"}, {"sessions": 1})
        self.assertEqual(await self.received(everyone, {"tag": "vip"}),
                         [False, False, False, False])
        await self.command("untag", {"session": bob.session, "tag": "vip"}, {"sessions": 0})
        # Tags are server-side only: clients are not told.
        self.assertEqual([f["op"] for f in bob.frames if f["op"] not in ("msg", "pong")],
                         ["welcome", "welcome", "ok"])

    @run
    async def test_list_groups_and_members(self):
        await self.assertAnswer("GET", "/api/groups", None, 200, {"groups": {}})
        a = await self.client(user="alice", groups=("g", "h"))
        b = await self.client(groups=("g",))
        await self.assertAnswer("GET", "/api/groups", None, 200, {"groups": {"g": 2, "h": 1}})
        status, body = await self.http("GET", "/api/groups/g")
        body["members"].sort(key=lambda m: m["session"])
        self.assertEqual((status, body), (200, {"group": "g", "members": sorted(
            [{"session": a.session, "user": "alice"}, {"session": b.session, "user": None}],
            key=lambda m: m["session"])}))
        await self.assertAnswer("GET", "/api/groups/nobody", None, 200,
                                {"group": "nobody", "members": []})

    @run
    async def test_user_sessions(self):
        a1 = await self.client(user="alice", groups=("g", "h"))
        a2 = await self.client(user="alice")
        await self.command("tag", {"session": a1.session, "tag": "vip"}, {"sessions": 1})
        status, body = await self.http("GET", "/api/users/alice")
        body["sessions"].sort(key=lambda s: s["session"])
        self.assertEqual((status, body), (200, {"user": "alice", "online": True, "sessions": [
            {"session": a1.session, "user": "alice", "groups": ["g", "h"], "tags": ["vip"]},
            {"session": a2.session, "user": "alice", "groups": [], "tags": []}]}))
        await self.assertAnswer("GET", "/api/users/bob", None, 200,
                                {"user": "bob", "online": False, "sessions": []})
        await a1.disconnect()
        await a2.disconnect()
        await self.assertAnswer("GET", "/api/users/alice", None, 200,
                                {"user": "alice", "online": False, "sessions": []})

    @run
    async def test_stats(self):
        zero = {"sessions": 0, "users": 0, "groups": 0, **dict.fromkeys(COUNTERS, 0)}
        await self.assertAnswer("GET", "/api/stats", None, 200,
                                {**zero, "workers": [{"worker": "test.0", **zero}]})
        a = await self.client(user="alice", groups=("g",))
        await self.client(user="alice", groups=("g", "h"))
        await self.client()
        await self.push({"group": "g"}, 1)
        await a.barrier()
        busy = {**zero, "sessions": 3, "users": 1, "groups": 2, "published": 1,
                "delivered": 2}
        await self.assertAnswer("GET", "/api/stats", None, 200,
                                {**busy, "workers": [{"worker": "test.0", **busy}]})

    @run
    async def test_bad_command_bodies(self):
        cases = {
            "join": [({"user": "u", "session": "s", "group": "g"}, BAD_TARGET),
                     ({"group": "g"}, BAD_TARGET),
                     ({"user": "u"}, error("bad_request", "'group' must be a non-empty string")),
                     ({"user": None, "group": "g"},
                      error("bad_request", "'user' must be a non-empty string")),
                     ({"session": 7, "group": "g"},
                      error("bad_request", "'session' must be a non-empty string")),
                     ({"user": "u", "group": "\ud800"},  # a lone surrogate: no UTF-8 form
                      error("bad_request",
                            "'group' must be valid Unicode (it holds a lone surrogate)")),
                     ({"session": "s\udfff", "group": "g"},
                      error("bad_request",
                            "'session' must be valid Unicode (it holds a lone surrogate)"))],
            "leave": [({"user": "u", "session": "s", "group": "g"}, BAD_TARGET),
                      ({"session": "s"}, error("bad_request",
                                               "'group' must be a non-empty string"))],
            "tag": [({"tag": "t"}, BAD_TARGET),
                    ({"user": "u", "group": "g"},
                     error("bad_request", "'tag' must be a non-empty string"))],
            "untag": [({"user": "u", "session": "s", "tag": "t"}, BAD_TARGET),
                      ({"user": "u", "tag": ""},
                       error("bad_request", "'tag' must be a non-empty string"))],
            "kick": [({"user": "u", "reason": "\ud800"},
                      error("bad_request", "'reason' must be a string of at most 120 bytes"))],
            "destroy": [({}, error("bad_request", "'group' must be a non-empty string")),
                        ({"group": ["g"]},
                         error("bad_request", "'group' must be a non-empty string"))],
        }
        for command, bodies in cases.items():
            for body, answer in bodies:
                await self.assertAnswer("POST", f"/api/{command}", body, 400, answer)
            await self.assertAnswer("POST", f"/api/{command}", ["g"], 400,
                                    error("bad_request", "the body must be a JSON object"))
            await self.assertAnswer("POST", f"/api/{command}", None, 400,
                                    error("bad_request", "not valid JSON"),
                                    raw=b"group=g")
