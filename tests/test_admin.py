"""The admin endpoint, ``LocalControl``, ``pushsvc-admin`` (run as a real child
process against a real server) and the process-wide log level."""

from __future__ import annotations

import io
import json
import os
import signal
import stat
import sys
from dataclasses import replace

from twisted.application.service import Application, Service
from twisted.internet import reactor
from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger, LogLevel, globalLogPublisher
from twisted.protocols import amp
from twisted.trial import unittest

from pushsvc import loglevel
from pushsvc.admin import cli
from pushsvc.admin.service import admin_service
from pushsvc.admin.wire import AdminError, Authenticate, Run, SetLogLevel
from pushsvc.config import ConfigError
from pushsvc.control import ControlError, IControl, LocalControl
from pushsvc.protocol import CLOSE_KICKED, ProtocolError
from zope.interface.verify import verifyObject

from pushsvc.ids import owner

from .helpers import Child, ChildTestCase, ServerTestCase, eventually, free_port, run

SECRET = "s3cret"


class AdminTestCase(ServerTestCase):
    """A one-process server with its admin endpoint on a unix socket in a temp
    folder (a relative path: a socket path holds at most 107 bytes)."""

    def start_admin(self, endpoint: str | None = None, secret: str = "",
                    again: bool = False, **overrides):
        """The admin endpoint; ``again``: on the same socket as before (a
        restarted server).  ``self.connections``: every console connection."""
        if not hasattr(self, "server"):
            self.start_server(**overrides)
        if not again:
            folder = self.mktemp()
            os.makedirs(folder)
            self.socket = os.path.join(folder, "admin.sock")
            self.connections = []
        endpoint = endpoint or f"unix:{self.socket}:mode=600:lockfile=1"
        settings = replace(self.server.settings, admin=endpoint, admin_secret=secret)
        self.control = LocalControl(self.server)
        service = admin_service(settings, self.control, reactor)
        build = service.factory.buildProtocol
        service.factory.buildProtocol = lambda addr: self._track(build(addr))
        service.startService()
        self.addCleanup(service.stopService)
        return service

    def _track(self, protocol):
        self.connections.append(protocol)
        return protocol

    async def stop_admin(self, service) -> None:
        """Stop listening and close every console connection, as a server that
        stops does; return once they are closed on this side."""
        await service.stopService()
        for protocol in self.connections:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
        await eventually(lambda: all(p.transport is None for p in self.connections),
                         what="the console connections closing")

    def console(self, *args: str, stdin: bytes | None = None, connect: str | None = None,
                cwd: str | None = None, keep_stdin: bool = False,
                close_stdout: bool = False) -> Child:
        """``pushsvc-admin ARGS`` as a child process, at this server's socket
        (``connect=""``: no --connect, the default socket in ``cwd``).
        ``keep_stdin``: stdin stays open (write lines with ``child.transport.write``);
        ``close_stdout``: nobody reads its output (a pipe whose reader left)."""
        child = Child()
        if connect is None:
            connect = getattr(self, "socket", "none.sock")
        argv = [sys.executable, "-m", "pushsvc.admin.cli",
                *(["--connect", connect] if connect else []), *args]
        env = {**os.environ, "HOME": os.path.abspath(self.mktemp())}
        env.pop(cli.SECRET_ENV, None)
        reactor.spawnProcess(child, sys.executable, argv, env=env, path=cwd or os.getcwd())
        child.pid = child.transport.pid  # the transport forgets it at the end
        if close_stdout:
            child.transport.closeStdout()
        if stdin is not None:
            child.transport.write(stdin)
        if not keep_stdin:
            child.transport.closeStdin()
        self.addCleanup(child.kill)
        return child

    async def said(self, child: Child, text: str, where: str = "stdout") -> None:
        """Wait until the child has written ``text`` (on ``where``)."""
        await eventually(lambda: text in getattr(child, where).decode(),
                         what=f"{text!r} on the console's {where}")

    async def finished(self, child: Child) -> tuple[int, str, str]:
        status = await child.exited()
        out, err = child.stdout.decode(), child.stderr.decode()
        self.assertNotIn("Traceback", out + err)
        return status, out, err

    def capture_log(self) -> list[dict]:
        events: list[dict] = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        return events


class ConsoleTests(AdminTestCase):
    """The console against a running server."""

    @run
    async def test_stats_as_a_table_and_as_json(self):
        self.start_admin()
        await self.client("u1", groups=("lobby",))
        table, as_json = self.console("stats"), self.console("--json", "stats")
        status, out, _ = await self.finished(table)
        self.assertEqual(status, 0)
        self.assertIn("sessions         1\n", out)
        self.assertIn("groups           1\n", out)
        status, out, _ = await self.finished(as_json)
        self.assertEqual(status, 0)
        self.assertEqual(json.loads(out)["sessions"], 1)

    @run
    async def test_stats_watch_refreshes_with_rates(self):
        """``stats --watch``: a table per refresh, then (``--count``) the end;
        with --json one line each, the second with the counters' rates."""
        self.start_admin()
        c = await self.client("u1", groups=("lobby",))
        as_json = self.console("--json", "stats", "--watch", "0.2", "--count", "2")
        while not as_json.done:  # messages flow while it watches
            await self.push({"group": "lobby"}, "tick")
            await deferLater(reactor, 0.01)
        status, out, _ = await self.finished(as_json)
        self.assertEqual(status, 0)
        first, second = (json.loads(line) for line in out.splitlines())
        self.assertEqual((first["sessions"], first["rates"]), (1, {}))
        self.assertEqual(second["sessions"], 1)
        self.assertGreater(second["delivered"], first["delivered"])
        self.assertGreater(second["rates"]["delivered"], 0)
        self.assertNotIn("sessions", second["rates"])
        self.assertTrue(c.messages)

        status, out, _ = await self.finished(
            self.console("stats", "--watch", "0.1", "--count", "2"))
        self.assertEqual(status, 0)
        self.assertEqual(out.count("pushsvc stats at "), 2, out)
        self.assertRegex(out, r"\ndelivered +[\d,]+ +[\d,.]+\n")

        status, _, err = await self.finished(self.console("--watch", "1", "workers"))
        self.assertEqual(status, 2)
        self.assertIn("--watch is for stats", err)

    @run
    async def test_push_reaches_a_client(self):
        self.start_admin()
        c = await self.client("u1", groups=("lobby",))
        status, out, _ = await self.finished(
            self.console("push", "group:lobby", '{"text":"hi"}'))
        self.assertEqual(status, 0)
        [message] = await c.wait_for_messages(1)
        self.assertEqual((message["to"], message["data"]), ({"group": "lobby"}, {"text": "hi"}))
        self.assertEqual(out, f"sent message {message['id']}\n")

    @run
    async def test_join_then_kick_logged_with_who_and_what(self):
        self.start_admin()
        events = self.capture_log()
        c = await self.client("u1")
        join = self.console("join", "u1", "lobby")
        status, out, _ = await self.finished(join)
        self.assertEqual((status, out), (0, "joined 1 session\n"))
        self.assertEqual(self.engine.registry.get(c.session).groups, {"lobby"})
        kick = self.console("kick", f"session:{c.session}", "go away")
        status, out, _ = await self.finished(kick)
        self.assertEqual((status, out), (0, "kicked 1 session\n"))
        self.assertEqual(await c.closed, (CLOSE_KICKED, "go away"))
        audit = [e for e in events if "admin_command" in e]
        self.assertEqual([(e["admin_command"], e["admin_args"]) for e in audit],
                         [("join", {"user": "u1", "group": "lobby"}),
                          ("kick", {"session": c.session, "reason": "go away"})])
        self.assertEqual([e["admin_peer"] for e in audit],
                         [{"pid": child.pid, "uid": os.getuid(), "gid": os.getgid()}
                          for child in (join, kick)])

    @run
    async def test_presence_lists_the_users_of_a_group(self):
        self.start_admin()
        await self.client("u1")
        await self.client("u1")
        self.assertEqual((await self.finished(self.console("join", "u1", "room")))[0], 0)
        status, out, _ = await self.finished(self.console("presence", "room"))
        self.assertEqual(status, 0)
        self.assertEqual(out.splitlines()[-1], "(2 sessions, 0 anonymous)")
        self.assertEqual(out.splitlines()[1].split(), ["u1", "2", "-"])

    @run
    async def test_refusals_are_one_line_and_status_1(self):
        self.start_admin()
        cases = [self.console("restart-workers"), self.console("join", "u1", "x" * 300)]
        results = await gatherResults([ensureDeferred(self.finished(c)) for c in cases])
        self.assertEqual(results, [
            (1, "", "restart-workers needs a worker pool; this server runs in one "
                    "process (--workers 0)\n"),
            (1, "", "'group' is longer than 200 characters\n")])

    @run
    async def test_interactive(self):
        self.start_admin()
        await self.client("u1", groups=("lobby",))
        child = self.console(stdin=b'groups\nhelp push\nbogus\n'
                                   b'push group:lobby {"text": "hi there"}\n'
                                   b'loglevel\nquit\n')
        status, out, err = await self.finished(child)
        self.assertEqual(status, 0)
        self.assertIn("GROUP  SESSIONS\nlobby         1\n", out)
        self.assertIn("usage: pushsvc-admin push TARGET DATA\n", out)
        self.assertIn("sent message ", out)
        self.assertIn("unknown command 'bogus'", err)
        self.assertIn("usage: pushsvc-admin loglevel LEVEL\n", err)

    @run
    async def test_a_failed_reload_says_which_worker(self):
        self.start_admin()
        self.server.reload = lambda settings: "app.py: no module named app"
        status, out, err = await self.finished(self.console("reload"))
        self.assertEqual((status, out, err),
                         (1, "", "worker 0: reload failed: app.py: no module named app\n"))

    @run
    async def test_bad_command_lines_answer_usage_without_the_server(self):
        cases = [self.console("bogus"), self.console("push", "group:lobby", "{nope"),
                 self.console("push", "lobby", "1"), self.console("kick")]
        results = await gatherResults([ensureDeferred(self.finished(c)) for c in cases])
        self.assertEqual([status for status, _, _ in results], [2, 2, 2, 2])
        errors = [err for _, _, err in results]
        self.assertIn("unknown command 'bogus'", errors[0])
        self.assertEqual(errors[1], "usage: pushsvc-admin push TARGET DATA\n"
                                    "DATA starts like JSON but is not valid JSON: {nope; "
                                    "quote it for the shell ('{\"text\": \"hi\"}'), or to "
                                    "send text, write it as a JSON string ('\"{nope\"')\n")
        self.assertIn("bad TARGET 'lobby'", errors[2])
        self.assertTrue(errors[3].startswith("usage: pushsvc-admin kick USER|session:ID"))

    @run
    async def test_no_server_names_the_endpoint_it_tried(self):
        """Run from a folder with no server (the default socket), at an absolute
        path, at a TCP port: one line naming the endpoint, and why."""
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        port = free_port()
        far = "/" + "z" * 200 + ".sock"  # longer than a unix socket address holds
        cases = [self.console("stats", connect="", cwd=folder),
                 self.console("stats", connect=os.path.join(folder, "gone.sock")),
                 self.console("stats", connect=f"tcp:{port}:interface=127.0.0.1"),
                 self.console("stats", connect=far)]
        results = await gatherResults([ensureDeferred(self.finished(c)) for c in cases])
        self.assertEqual(results, [
            (1, "", f"cannot connect to unix:pushsvc-admin.sock ({folder}/pushsvc-admin.sock): "
                    "No such file or directory; is pushsvc running, and is this its run "
                    "directory? Use --connect to give its endpoint\n"),
            (1, "", f"cannot connect to unix:{folder}/gone.sock: No such file or directory; "
                    "is pushsvc running?\n"),
            (1, "", f"cannot connect to tcp:127.0.0.1:{port}: Connection refused; "
                    "is pushsvc running?\n"),
            (1, "", f"cannot connect to unix:{far}: its path is longer than a unix socket "
                    "address holds (107 bytes), even relative to this folder; run the "
                    "console nearer to it\n")])

    @run
    async def test_a_malformed_endpoint_is_a_bad_endpoint(self):
        values = ["tcp:x", "unix:", "tcp:99999", "tcp:0", "", "ssl:8443"]
        cases = [self.console("stats", "--connect", value, connect="") for value in values]
        results = await gatherResults([ensureDeferred(self.finished(c)) for c in cases])
        self.assertEqual([status for status, _, _ in results], [2] * len(values))
        for value, (_, out, err) in zip(values, results):
            self.assertEqual(out, "")
            self.assertTrue(err.startswith(f"bad endpoint '{value}': "), err)
            self.assertEqual(err.count("\n"), 1, err)
            self.assertIn("use a socket path, unix:PATH or tcp:PORT", err)

    @run
    async def test_interactive_reconnects_after_the_server_restarts(self):
        """The prompt outlives its server: after a restart the next command
        connects again; while it is away each command says so in one line;
        ``quit`` (or end of input) on a dead connection leaves with status 0."""
        service = self.start_admin()
        await self.client("u1", groups=("lobby",))
        listing = "GROUP  SESSIONS\nlobby         1\n"
        child = self.console(keep_stdin=True)
        child.transport.write(b"groups\n")
        await self.said(child, listing)

        await self.stop_admin(service)  # restarted between two commands
        service = self.start_admin(again=True)
        child.transport.write(b"groups\n")
        await eventually(lambda: child.stdout.decode().count(listing) == 2)

        await self.stop_admin(service)  # away: one line, and the prompt stays
        child.transport.write(b"groups\n")
        await self.said(child, "is pushsvc running", where="stderr")
        service = self.start_admin(again=True)
        child.transport.write(b"groups\n")
        await eventually(lambda: child.stdout.decode().count(listing) == 3)

        await self.stop_admin(service)
        child.transport.write(b"quit\n")
        status, out, err = await self.finished(child)
        self.assertEqual(status, 0)
        self.assertEqual(err, f"cannot connect to unix:{self.socket} "
                              f"({os.path.abspath(self.socket)}): No such file or directory; "
                              "is pushsvc running, and is this its run directory? "
                              "Use --connect to give its endpoint\n")

        service = self.start_admin(again=True)
        child = self.console(keep_stdin=True)
        await self.said(child, "connected to ")
        await self.stop_admin(service)
        child.transport.closeStdin()  # Ctrl-D
        status, out, err = await self.finished(child)
        self.assertEqual((status, err), (0, ""))

    @run
    async def test_a_reader_that_leaves_early_ends_it_quietly(self):
        """``pushsvc-admin sessions | head -1``: once nobody reads its output,
        the console exits with 141 (as if killed by SIGPIPE), no traceback."""
        self.start_admin()
        cases = [self.console("sessions", close_stdout=True),
                 self.console("stats", "--watch", "0.1", close_stdout=True),
                 self.console("--json", "stats", "--watch", "0.1", close_stdout=True),
                 self.console("help", close_stdout=True),
                 self.console(stdin=b"groups\n", close_stdout=True),
                 self.console("--help", close_stdout=True)]
        results = await gatherResults([ensureDeferred(self.finished(c)) for c in cases])
        self.assertEqual(results[:-1], [(141, "", "")] * (len(cases) - 1))
        # argparse's --help ignores a failed write itself: 0, quietly too
        self.assertIn(results[-1], [(0, "", ""), (141, "", "")])

    @run
    async def test_help_one_shot_as_at_the_prompt(self):
        """``help`` and ``help COMMAND`` need no server and say what the
        prompt's do."""
        cases = [self.console("help", connect="gone.sock"),
                 self.console("help", "push", connect="gone.sock"),
                 self.console("help", "bogus", connect="gone.sock")]
        results = await gatherResults([ensureDeferred(self.finished(c)) for c in cases])
        (status, every, err), (push_status, push, push_err), bogus = results
        self.assertEqual((status, err, push_status, push_err), (0, "", 0, ""))
        self.assertTrue(every.startswith("commands:\n  stats [--watch [SECONDS]]"), every)
        self.assertIn("\n  push TARGET DATA ", every)
        self.assertTrue(every.endswith("\n  help [COMMAND]\n"), every)
        self.assertTrue(push.startswith("usage: pushsvc-admin push TARGET DATA\n  send DATA"),
                        push)
        self.assertEqual(bogus[:2], (2, ""))
        self.assertTrue(bogus[2].startswith("unknown command 'bogus'; the commands are:\n"))

        self.start_admin()
        status, out, err = await self.finished(self.console(stdin=b"help push\nhelp\n"))
        self.assertEqual((status, err), (0, ""))
        self.assertIn(push, out)
        self.assertIn(every.replace("  help [COMMAND]\n", ""), out)

    @run
    async def test_push_plain_text_is_sent_as_a_string(self):
        """DATA that is not JSON, and does not start like JSON, is text."""
        self.start_admin()
        c = await self.client("u1", groups=("lobby",))
        sent = [("hi",), ('{"a": 1}',), ("42",), ("hello", "world"), ('"quoted"',)]
        for words in sent:
            status, out, _ = await self.finished(self.console("push", "group:lobby", *words))
            self.assertEqual(status, 0)
        child = self.console(stdin=b"push group:lobby it's plain text\n"
                                   b"push group:lobby {\"a\": [1, 2]}\n")
        self.assertEqual((await self.finished(child))[0], 0)
        messages = await c.wait_for_messages(7)
        self.assertEqual([m["data"] for m in messages],
                         ["hi", {"a": 1}, 42, "hello world", "quoted", "it's plain text",
                          {"a": [1, 2]}])

        # JSON that lost its quotes to the shell: an error that says how to quote
        status, out, err = await self.finished(
            self.console("push", "group:lobby", "{text:hi}"))
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(err, "usage: pushsvc-admin push TARGET DATA\n"
                              "DATA starts like JSON but is not valid JSON: {text:hi}; "
                              "quote it for the shell ('{\"text\": \"hi\"}'), or to send "
                              "text, write it as a JSON string ('\"{text:hi}\"')\n")

    @run
    async def test_json_stats_totals_have_no_worker(self):
        """``--json stats`` is the whole server's: no ``worker`` field (the
        rows of ``--json workers`` keep theirs)."""
        self.start_admin()
        cases = [self.console("--json", "stats"), self.console("--json", "workers")]
        (status, stats, _), (_, workers, _) = await gatherResults(
            [ensureDeferred(self.finished(c)) for c in cases])
        self.assertEqual(status, 0)
        self.assertNotIn("worker", json.loads(stats))
        self.assertEqual(json.loads(stats)["sessions"], 0)
        self.assertEqual([w["worker"] for w in json.loads(workers)], [0])

    @run
    async def test_tcp_with_secret(self):
        service = self.start_admin("tcp:0:interface=127.0.0.1", secret=SECRET)
        port = service._waitingForPort.result.getHost().port
        status, out, _ = await self.finished(self.console(
            "--secret", SECRET, "groups", connect=f"tcp:host=127.0.0.1:port={port}"))
        self.assertEqual((status, out), (0, "(none)\n"))


class EndpointTests(AdminTestCase):
    """The admin endpoint in this process."""

    def test_socket_for_the_owner_only(self):
        self.start_admin()
        self.assertEqual(stat.S_IMODE(os.stat(self.socket).st_mode), 0o600)

    def test_a_live_socket_refuses_a_second_server(self):
        self.start_admin()
        stderr = io.StringIO()
        self.patch(sys, "__stderr__", stderr)
        settings = replace(self.server.settings, admin=f"unix:{self.socket}:lockfile=1")
        second = admin_service(settings, self.control, reactor)
        self.assertRaises(SystemExit, second.privilegedStartService)
        self.assertEqual(stderr.getvalue(), f"pushsvc: cannot listen on the admin endpoint "
                         f"unix:{self.socket}:lockfile=1: a live server holds it "
                         f"(is pushsvc already running here?)\n")

    def test_no_endpoint(self):
        self.start_server()
        self.assertIsNone(admin_service(replace(self.server.settings, admin=""),
                                        LocalControl(self.server), reactor))

    async def amp_client(self, service) -> amp.AMP:
        port = service._waitingForPort.result.getHost().port
        client = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port),
                                       amp.AMP())
        self.addCleanup(client.transport.loseConnection)
        return client

    @run
    async def test_tcp_needs_the_secret_first(self):
        service = self.start_admin("tcp:0:interface=127.0.0.1", secret=SECRET)
        client = await self.amp_client(service)
        with self.assertRaises(AdminError) as refused:
            await client.callRemote(Run, name="stats", args={})
        self.assertIn("authenticate first", str(refused.exception))
        await client.callRemote(Authenticate, secret=SECRET)
        answer = await client.callRemote(Run, name="stats", args={})
        self.assertEqual(answer["result"]["sessions"], 0)

    @run
    async def test_a_wrong_secret_closes_the_connection(self):
        service = self.start_admin("tcp:0:interface=127.0.0.1", secret=SECRET)
        events = self.capture_log()
        client = await self.amp_client(service)
        lost, connection_lost = [], client.connectionLost
        client.connectionLost = lambda reason: (lost.append(reason), connection_lost(reason))
        with self.assertRaises(AdminError) as refused:
            await client.callRemote(Authenticate, secret="guess")
        self.assertEqual(str(refused.exception), "wrong secret")
        self.assertEqual([e["log_format"] for e in events if e.get("admin_peer")],
                         ["admin: wrong secret from {who}"])
        await eventually(lambda: lost, what="the server closing the connection")
        self.assertTrue(lost[0].check(ConnectionDone))

    @run
    async def test_audit_is_logged_whatever_the_level(self):
        service = self.start_admin("tcp:0:interface=127.0.0.1", secret=SECRET)
        self.addCleanup(loglevel.set_level, loglevel.current())
        seen: list[dict] = []
        observer = loglevel.filtered(seen.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        client = await self.amp_client(service)
        await client.callRemote(Authenticate, secret=SECRET)
        await client.callRemote(SetLogLevel, level="critical")
        await client.callRemote(Run, name="destroy", args={"group": "g"})
        loglevel.set_level("info")
        Logger(namespace="pushsvc.admin.service").info("shown")
        self.assertEqual([(e.get("admin_command"), e["log_namespace"]) for e in seen[-3:]],
                         [("loglevel", "pushsvc.admin.audit"),
                          ("destroy", "pushsvc.admin.audit"), (None, "pushsvc.admin.service")])
        self.assertEqual(seen[-2]["admin_peer"]["host"], "127.0.0.1")

    @run
    async def test_unknown_log_level(self):
        service = self.start_admin("tcp:0:interface=127.0.0.1", secret=SECRET)
        client = await self.amp_client(service)
        await client.callRemote(Authenticate, secret=SECRET)
        with self.assertRaises(AdminError) as refused:
            await client.callRemote(SetLogLevel, level="loud")
        self.assertIn("unknown log level 'loud'", str(refused.exception))


class LocalControlTests(ServerTestCase):
    def setUp(self):
        self.start_server()
        self.control = LocalControl(self.server)

    def test_interface(self):
        verifyObject(IControl, self.control)

    def test_workers(self):
        [worker] = self.successResultOf(self.control.workers())
        self.assertEqual((worker["worker"], worker["pid"], worker["owner"], worker["sessions"]),
                         (0, os.getpid(), "test.0", 0))

    def test_run_checks_arguments(self):
        self.failureResultOf(self.control.run("join", {"group": "g"}), ProtocolError)
        self.assertEqual(self.successResultOf(self.control.run("groups", {})), [{"groups": {}}])

    def test_push_refuses_a_bad_address(self):
        self.failureResultOf(self.control.push({"nowhere": 1}, 1), ProtocolError)

    def test_restart_needs_a_pool(self):
        self.failureResultOf(self.control.restart_workers(), ControlError)

    def test_reload(self):
        given = []
        self.server.reload = lambda settings: given.append(settings)
        self.assertEqual(self.successResultOf(self.control.reload()),
                         [{"worker": 0, "pid": os.getpid(), "ok": True, "error": None}])
        self.assertEqual(given, [self.server.settings.reread()])

    def test_set_log_level(self):
        self.addCleanup(loglevel.set_level, loglevel.current())
        self.successResultOf(self.control.set_log_level("warn"))
        self.assertEqual(loglevel.current(), "warn")


class ArgumentTests(unittest.TestCase):
    """The console's pure parts."""

    def test_targets(self):
        self.assertEqual(cli.parse_target("all"), {"all": True})
        self.assertEqual(cli.parse_target("group:a:b"), {"group": "a:b"})
        self.assertEqual(cli.parse_target("session:n.0.x.1"), {"session": "n.0.x.1"})
        self.assertEqual(cli.parse_target('{"user": ["a", "b"]}'), {"user": ["a", "b"]})
        for bad in ("lobby", "group:", "room:x", "[1]", "{x"):
            self.assertRaises(cli.Usage, cli.parse_target, bad)

    def test_who(self):
        self.assertEqual(cli.parse_who("u1"), {"user": "u1"})
        self.assertEqual(cli.parse_who("user:session:x"), {"user": "session:x"})
        self.assertEqual(cli.parse_who("session:n.0.x.1"), {"session": "n.0.x.1"})

    def test_endpoints(self):
        T = cli.Target
        self.assertEqual(cli.parse_endpoint("unix:pushsvc-admin.sock:mode=600:lockfile=1"),
                         T(path="pushsvc-admin.sock"))
        self.assertEqual(cli.parse_endpoint("unix:address=/run/a\\:b.sock"),
                         T(path="/run/a:b.sock"))
        self.assertEqual(cli.parse_endpoint("unix:path=/run/p.sock"), T(path="/run/p.sock"))
        self.assertEqual(cli.parse_endpoint("/run/p.sock"), T(path="/run/p.sock"))
        self.assertEqual(cli.parse_endpoint("tcp:9999:interface=127.0.0.2"),
                         T(host="127.0.0.2", port=9999))
        self.assertEqual(cli.parse_endpoint("tcp:port=9999"), T(host="127.0.0.1", port=9999))
        self.assertEqual(cli.parse_endpoint("tcp:localhost:9999"), T(host="localhost", port=9999))
        self.assertEqual(cli.parse_endpoint("tcp6:9999:interface=\\:\\:1"),
                         T(host="::1", port=9999))
        self.assertEqual(str(T(host="::1", port=9)), "tcp:[::1]:9")
        self.assertEqual(str(T(path="a.sock")), "unix:a.sock")
        self.assertEqual(T(path="a.sock").describe(),
                         f"unix:a.sock ({os.path.abspath('a.sock')})")
        self.assertEqual(T(path="/run/a.sock").describe(), "unix:/run/a.sock")
        for bad in ("unix:", "tcp:interface=127.0.0.1", "tcp:x", "tcp:70000", "tcp:0", "",
                    " ", "ssl:8443:privateKey=k.pem"):
            self.assertRaises(cli.BadEndpoint, cli.parse_endpoint, bad)

    def test_a_socket_path_too_long_for_a_unix_address(self):
        """Relative to the current folder when it fits that way, else one line."""
        near = os.path.abspath(os.path.join("x" * 50, "y" * 40, "admin.sock"))
        self.assertEqual(cli.Target(path=near).reachable_path(),
                         os.path.join("x" * 50, "y" * 40, "admin.sock"))
        far = "/" + "z" * 200 + ".sock"
        with self.assertRaises(cli.Unreachable) as e:
            cli.Target(path=far).reachable_path()
        self.assertIn(f"cannot connect to unix:{far}: its path is longer than a unix socket "
                      f"address holds", str(e.exception))

    def test_push_data(self):
        self.assertEqual(cli.parse_data('{"a": 1}'), {"a": 1})
        self.assertEqual(cli.parse_data("42"), 42)
        self.assertEqual(cli.parse_data('"42"'), "42")
        self.assertEqual(cli.parse_data("hi"), "hi")
        self.assertEqual(cli.parse_data("it's 5 o'clock"), "it's 5 o'clock")
        for bad in ("{text:hi}", "[1,", '"open', " {x"):
            self.assertRaises(cli.Usage, cli.parse_data, bad)
        _, (_, args) = cli.prepare("push", ["all", "hello", "world"])
        self.assertEqual(args, {"to": {"all": True}, "data": "hello world"})

    def test_help(self):
        self.assertTrue(cli.help_for([]).endswith("\n  help [COMMAND]"))
        self.assertTrue(cli.help_for([], prompt=True).endswith("\n  help [COMMAND]\n  quit"))
        self.assertEqual(cli.help_for(["group"]),
                         "usage: pushsvc-admin group GROUP\n  the sessions in GROUP")
        self.assertRaises(cli.Usage, cli.help_for, ["bogus"])

    def test_command_arguments(self):
        command, (request, args) = cli.prepare("kick", ["u1", "see", "you"])
        self.assertEqual((request, args), (Run, {"name": "kick", "args": {
            "user": "u1", "reason": "see you"}}))
        _, (_, args) = cli.prepare("sessions", [])
        self.assertEqual(args, {"name": "sessions", "args": {}})
        with self.assertRaises(cli.Usage) as e:
            cli.prepare("group", [])
        self.assertEqual(str(e.exception), "usage: pushsvc-admin group GROUP\n"
                                           "wrong number of arguments (0)")
        self.assertRaises(cli.Usage, cli.prepare, "loglevel", ["loud"])
        self.assertRaises(cli.Usage, cli.prepare, "stats", ["x"])

    def test_every_server_command_is_a_console_command(self):
        """The console reads the one command table (pushsvc/commands.py): each
        server-side command is offered, with its usage built from its arguments."""
        from pushsvc.commands import COMMANDS as SERVER
        self.assertLessEqual(set(SERVER), set(cli.COMMANDS))
        self.assertEqual(cli.help_for(["tag"]).splitlines()[0],
                         "usage: pushsvc-admin tag USER|session:ID TAG")
        _, (_, args) = cli.prepare("presence", ["room"])
        self.assertEqual(args, {"name": "presence", "args": {"group": "room"}})
        _, (_, args) = cli.prepare("untag", ["session:s1", "vip"])
        self.assertEqual(args, {"name": "untag", "args": {"session": "s1", "tag": "vip"}})
        self.assertRaises(cli.Usage, cli.prepare, "untag", ["u1", "vip", "extra"])
        self.assertRaises(cli.Usage, cli.prepare, "sessions", ["u1", "u2"])

    def test_interactive_words(self):
        words = cli.interactive_words
        self.assertEqual(words("push", 'group:g {"a": [1, 2]}'), ["group:g", '{"a": [1, 2]}'])
        self.assertEqual(words("push", "group:g '{\"a\": 1}'"), ["group:g", '{"a": 1}'])
        self.assertEqual(words("push", 'all "hi"'), ["all", '"hi"'])
        self.assertEqual(words("kick", 'u1 "two words"'), ["u1", "two words"])
        self.assertEqual(words("push", "all it's"), ["all", "it's"])
        self.assertEqual(words("push", "all two words"), ["all", "two words"])

    def test_completion(self):
        console = cli.Console.__new__(cli.Console)
        self.assertEqual(console.completenames("re"), ["reload", "restart-workers"])
        self.assertEqual(console.completedefault("w", "loglevel w", 9, 10), ["warn"])
        self.assertEqual(console.completedefault("un", "help un", 5, 7), ["untag"])


    def test_command_line(self):
        args = cli.parse_args(["push", "all", "1", "--json", "--secret", "s"])
        self.assertEqual((args.command, args.words, args.json, args.secret),
                         ("push", ["all", "1"], True, "s"))

    def test_config_file(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write('[server]\nadmin = "tcp:7777:interface=127.0.0.1"\nadmin_secret = "k"\n')
        self.patch(os, "environ", {})
        self.assertEqual(cli.connection_of(cli.parse_args(["--config", path])),
                         (cli.Target(host="127.0.0.1", port=7777), "k"))
        self.assertEqual(cli.connection_of(cli.parse_args(
            ["--config", path, "--connect", "a.sock", "--secret", "s"])),
            (cli.Target(path="a.sock"), "s"))
        with open(path, "w") as f:
            f.write('[server]\nadmin = ""\n')
        self.assertRaises(ConfigError, cli.connection_of, cli.parse_args(["--config", path]))


class FormatTests(unittest.TestCase):
    def test_table(self):
        self.assertEqual(cli.table(["group", "sessions"], [["lobby", 12], ["a", 3]]),
                         "GROUP  SESSIONS\n"
                         "lobby        12\n"
                         "a             3")
        self.assertEqual(cli.table(["session", "user", "groups", "ready"],
                                   [["s1", None, ["a", "b"], True]]),
                         "SESSION  USER  GROUPS  READY\n"
                         "s1       -     a,b     yes")
        self.assertEqual(cli.table(["x"], []), "(none)")

    def test_pairs_and_durations(self):
        self.assertEqual(cli.pairs({"sessions": 3, "published": 10}),
                         "sessions   3\npublished  10")
        self.assertEqual([cli.duration(s) for s in (5, 65, 7300, 90000)],
                         ["5s", "1m 5s", "2h 1m", "1d 1h"])

    def test_results(self):
        C = cli.COMMANDS
        self.assertEqual(C["join"].show({"sessions": 2, "refused": 1}),
                         "joined 2 sessions; 1 refused (at max_groups_per_session)")
        reload = [{"worker": 0, "ok": True, "error": None},
                  {"worker": 1, "ok": False, "error": "bad module"}]
        self.assertEqual(C["reload"].show(reload), "worker 0: reloaded")
        self.assertEqual(C["reload"].errors(reload), ["worker 1: reload failed: bad module"])
        self.assertEqual(C["sessions"].show({"sessions": [
            {"session": "s1", "user": "u", "groups": [], "tags": ["t"]}], "total": 5}),
            "SESSION  USER  GROUPS  TAGS\ns1       u     -       t\n(1 shown of 5)")


class LogLevelTests(unittest.TestCase):
    def setUp(self):
        self.addCleanup(loglevel.set_level, loglevel.current())
        self.seen: list[dict] = []
        self.log = Logger(namespace="pushsvc.test", observer=loglevel.filtered(self.seen.append))

    def levels(self):
        return [e["log_level"] for e in self.seen]

    def test_set_level(self):
        loglevel.set_level("info")
        self.log.debug("hidden")
        self.log.info("shown")
        loglevel.set_level("error")
        self.log.warn("hidden")
        self.log.error("shown")
        self.assertEqual(self.levels(), [LogLevel.info, LogLevel.error])
        self.assertRaises(ValueError, loglevel.set_level, "loud")

    def test_under_twist(self):
        runner = {"fileLogObserverFactory": lambda out: out.append}
        service = object()
        self.assertIs(loglevel.under_runner(service, runner), service)
        observer = runner["fileLogObserverFactory"](self.seen)
        loglevel.set_level("warn")
        Logger(namespace="x", observer=observer).info("hidden")
        self.assertEqual(self.seen, [])

    def test_under_twistd(self):
        self.addCleanup(signal.signal, signal.SIGUSR1, signal.getsignal(signal.SIGUSR1))
        path = os.path.abspath(self.mktemp())
        application = Application("pushsvc")
        root = loglevel.under_runner(Service(), {"logfile": path, "nodaemon": True})
        root.setServiceParent(application)
        observer = application.getComponent(ILogObserver)
        loglevel.set_level("warn")
        Logger(namespace="x", observer=observer).info("hidden")
        Logger(namespace="x", observer=observer).warn("shown")
        with open(path) as f:
            self.assertEqual([line.split(" ", 1)[1] for line in f], ["[x#warn] shown\n"])


POOL_APP = '''
from pushsvc.app import Deliver

def on_message(session, api, to, data):
    return Deliver("{version}: " + data)
'''


class PoolConsoleTests(ChildTestCase):
    """``twistd pushsvc --workers 2`` driven by ``pushsvc-admin`` on its
    default socket, and by SIGHUP."""

    def console(self, *args: str) -> Child:
        child = Child()
        argv = [sys.executable, "-m", "pushsvc.admin.cli", *args]
        reactor.spawnProcess(child, sys.executable, argv,
                             env={**os.environ, "HOME": self.cwd}, path=self.cwd)
        self.addCleanup(child.kill)
        return child

    async def said(self, *args: str) -> str:
        """Run the console; its output (status 0, no traceback)."""
        child = self.console(*args)
        status = await child.exited()
        self.assertEqual(status, 0, child.output())
        self.assertNotIn("Traceback", child.output())
        return child.stdout.decode()

    def write_app(self, text: str) -> None:
        with open(os.path.join(self.cwd, "app.py"), "w") as f:
            f.write(text)

    async def echo(self, speaker, listener) -> str:
        count = len(listener.messages)
        await speaker.request("send", to={"group": "lobby"}, data="hi")
        await eventually(lambda: len(listener.messages) > count)
        return listener.messages[-1]["data"]

    @run
    async def test_console_and_sighup_drive_the_pool(self):
        self.write_app(POOL_APP.format(version="v1"))
        port = free_port()
        master = self.spawn("twistd", "--workers", "2", "--port", str(port), "--app", "app.py")
        await self.wait_serving(master, port, workers=2)
        await eventually(lambda: os.path.exists(os.path.join(self.cwd, "pushsvc-admin.sock")))
        clients = [await self.client(f"u{i}", groups=("lobby",)) for i in range(20)]
        by_worker = {}
        for c in clients:
            by_worker.setdefault(owner(c.session), c)
        self.assertEqual(len(by_worker), 2)
        speaker, listener = by_worker.values()

        workers = json.loads(await self.said("--json", "workers"))
        self.assertEqual(sorted(w["worker"] for w in workers), [0, 1])
        self.assertEqual(sum(w["sessions"] for w in workers), 20)
        totals = json.loads(await self.said("--json", "stats"))
        self.assertEqual(totals["sessions"], 20)
        self.assertNotIn("worker", totals)

        await self.said("push", "group:lobby", '{"text": "hello"}')
        await eventually(lambda: all(c.messages for c in clients))
        self.assertEqual({c.messages[0]["data"]["text"] for c in clients}, {"hello"})
        self.assertEqual(await self.echo(speaker, listener), "v1: hi")

        # SIGHUP reloads the module in both workers; nobody is disconnected.
        self.write_app(POOL_APP.format(version="v2"))
        master.transport.signalProcess("HUP")
        await eventually(lambda: master.output().count("reloaded") >= 2, what="both reloaded")
        self.assertEqual(await self.echo(speaker, listener), "v2: hi")
        self.assertEqual([c.close_code for c in clients], [None] * 20)

        # A reload that fails says so for each worker; the old code stays.
        self.write_app("def on_message(:\n")
        failed = self.console("reload")
        self.assertEqual(await failed.exited(), 1, failed.output())
        self.assertEqual(failed.output().count("app.py, line 1: SyntaxError"), 2,
                         failed.output())
        self.assertEqual(await self.echo(speaker, listener), "v2: hi")

        await self.said("loglevel", "warn")
        quiet_from = len(master.output())

        # restart-workers: new pids, every client told 1012.
        self.write_app(POOL_APP.format(version="v3"))
        out = await self.said("--json", "restart-workers")
        replaced = json.loads(out)["replaced"]
        self.assertEqual(sorted(r["worker"] for r in replaced), [0, 1])
        self.assertEqual({r["old_pid"] for r in replaced}, {w["pid"] for w in workers})
        await eventually(lambda: all(c.close_code is not None for c in clients))
        self.assertEqual({c.close_code for c in clients}, {1012})
        again = [await self.client(f"u{i}", groups=("lobby",)) for i in range(20)]
        new_workers = json.loads(await self.said("--json", "workers"))
        self.assertEqual({w["pid"] for w in new_workers}, {r["new_pid"] for r in replaced})
        self.assertEqual(sum(w["sessions"] for w in new_workers), 20)
        self.assertEqual(len(again), 20)
        # Since `loglevel warn`, neither the master nor a worker (old or new)
        # logged below warn.
        before, after = master.output()[:quiet_from], master.output()[quiet_from:]
        self.assertIn("#info] worker 0 ready", before)
        self.assertEqual([line for line in after.splitlines()
                          if "#info]" in line and "pushsvc.admin.audit" not in line], [])
        self.assertIn("[pushsvc.admin.audit#info] admin command from uid", after)
