"""Start-up and shut-down of the real ``pushsvc``, ``twistd pushsvc`` and
``twist pushsvc``.

Each test runs the scripts installed next to the running Python as a child
process (in a temporary folder, no pid file) and talks to it over loopback:
it serves, takes its settings from the command line and the config file, stops
on SIGTERM/SIGINT closing clients with 1001, and refuses bad input with one
line on stderr and a non-zero status.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.error import ConnectError

from tests.helpers import BIN, Child, ChildTestCase, eventually, free_port, run

ROOT = Path(__file__).resolve().parent.parent


class StartupTests(ChildTestCase):

    def spawn(self, script: str, *args: str) -> Child:
        """As ChildTestCase.spawn; ``pushsvc`` is the console script, which
        takes pushsvc's options alone (no sub-command, no twistd flags)."""
        if script != "pushsvc":
            return super().spawn(script, *args)
        child = Child()
        executable = os.path.join(BIN, "pushsvc")
        reactor.spawnProcess(child, executable, [executable, *args],
                             env=os.environ.copy(), path=self.cwd)
        self.addCleanup(child.kill)
        return child

    def write_config(self, text: str) -> str:
        path = os.path.join(self.cwd, "pushsvc.toml")
        with open(path, "w") as f:
            f.write(text)
        return path

    async def check_serves_and_stops(self, script: str, sig: str) -> None:
        """Serve a push to a client, then ``sig``: the client sees 1001, exit 0."""
        port = free_port()
        child = self.spawn(script, "--port", str(port))
        await self.wait_serving(child, port)
        c = await self.client()
        msg_id = await self.push({"session": c.session}, "hello")
        # The push may enter through another worker than the client's.
        await eventually(lambda: c.messages, what="the push")
        self.assertEqual([(m["id"], m["data"]) for m in c.messages], [(msg_id, "hello")])
        child.transport.signalProcess(sig)
        code, _reason = await c.closed
        self.assertEqual(code, 1001)
        self.assertEqual(await self.wait_exit(child), 0, child.output())
        self.assertNotIn("Traceback", child.output())

    async def check_refused(self, setting: str, *args: str, script: str = "twistd") -> str:
        """Start-up fails: non-zero status, one stderr line naming ``setting``."""
        child = self.spawn(script, *args)
        status = await self.wait_exit(child)
        output = child.output()
        self.assertNotIn(status, (0, None), output)
        self.assertNotIn("Traceback", output)
        lines = child.stderr_lines()
        self.assertEqual(len(lines), 1, output)
        self.assertIn(setting, lines[0])
        return lines[0]

    # -- serving and stopping

    @run
    async def test_twistd_sigterm(self):
        await self.check_serves_and_stops("twistd", "TERM")

    @run
    async def test_twistd_sigint(self):
        await self.check_serves_and_stops("twistd", "INT")

    @run
    async def test_twist_sigterm(self):
        await self.check_serves_and_stops("twist", "TERM")

    @run
    async def test_pushsvc_sigterm(self):
        await self.check_serves_and_stops("pushsvc", "TERM")

    @run
    async def test_pushsvc_sigint(self):
        await self.check_serves_and_stops("pushsvc", "INT")

    @run
    async def test_pushsvc_runs_as_twistd_does(self):
        """In the foreground, its log on stdout (nothing on stderr), no pid
        file; the config file and the command line as for twistd."""
        file_port, cli_port = free_port(), free_port()
        path = self.write_config(f"[server]\nport = {file_port}\nworkers = 0\n")
        child = self.spawn("pushsvc", "--config", path, "--port", str(cli_port))
        await self.wait_serving(child, cli_port)
        c = await self.client(user="u")
        await self.push({"user": "u"}, "hi")
        await eventually(lambda: c.messages, what="the push")
        child.transport.signalProcess("TERM")
        self.assertEqual(await self.wait_exit(child), 0, child.output())
        self.assertEqual(child.stderr, b"")
        log = child.stdout.decode()
        self.assertIn(f"listening on tcp:{cli_port}", log)
        self.assertIn("received SIGTERM, shutting down", log)
        self.assertEqual(os.listdir(self.cwd), ["pushsvc.toml"])  # no twistd.pid, no socket

    async def run_to_end(self, *args: str) -> Child:
        child = self.spawn("pushsvc", *args)
        await self.wait_exit(child)
        return child

    @run
    async def test_pushsvc_help_lists_twistd_pushsvc_options(self):
        """`pushsvc --help` shows the options of `twistd pushsvc --help`,
        under its own name, and its two commands."""
        mine, twistds = await self.run_to_end("--help"), self.spawn("twistd", "--help")
        await self.wait_exit(twistds)
        self.assertEqual((mine.status, twistds.status), (0, 0))
        ours, theirs = mine.stdout.decode(), twistds.stdout.decode()
        self.assertTrue(ours.startswith("Usage: pushsvc [options]\n"), ours)
        options = theirs.split("\n", 1)[1]
        self.assertIn(options, ours)
        for flag in ("--port", "--listen", "--workers", "--config", "--admin", "--redis",
                     "--app", "--node", "--log-format"):
            self.assertIn(f"{flag}=", options)
        self.assertIn("pushsvc sample-config", ours)
        self.assertIn("pushsvc copy-samples DIR", ours)

    @run
    async def test_sample_config(self):
        child = await self.run_to_end("sample-config")
        self.assertEqual(child.status, 0, child.output())
        self.assertEqual(child.stdout.decode(),
                         (ROOT / "etc" / "pushsvc.toml").read_text(encoding="utf-8"))

    @run
    async def test_copy_samples(self):
        """The samples land in DIR as in the checkout; a second copy
        overwrites nothing and says so in one line."""
        child = await self.run_to_end("copy-samples", "samples")
        self.assertEqual(child.status, 0, child.output())
        copied = sorted(str(p.relative_to(Path(self.cwd, "samples")))
                        for p in Path(self.cwd, "samples").rglob("*") if p.is_file())
        self.assertEqual(copied, sorted(
            ["etc/pushsvc.toml", "etc/pushsvc.service", "etc/nginx-pushsvc.conf"]
            + [f"examples/{p.name}" for p in (ROOT / "examples").glob("*.py")]))
        for relative in copied:
            self.assertEqual(Path(self.cwd, "samples", relative).read_bytes(),
                             (ROOT / relative).read_bytes(), relative)
        again = await self.run_to_end("copy-samples", "samples")
        self.assertEqual(again.status, 1)
        self.assertEqual(again.stderr_lines(), [
            "pushsvc: samples/etc/pushsvc.toml exists; not overwriting anything"])

    @run
    async def test_python_dash_m(self):
        """`python -m pushsvc.cli --help` is the same command."""
        child = Child()
        reactor.spawnProcess(child, sys.executable,
                             [sys.executable, "-m", "pushsvc.cli", "--help"],
                             env=os.environ.copy(), path=self.cwd)
        self.addCleanup(child.kill)
        self.assertEqual(await self.wait_exit(child), 0, child.output())
        self.assertIn("--port=", child.stdout.decode())

    @run
    async def test_two_listen_endpoints(self):
        """Each --listen serves, and both reach the same server."""
        ports = free_port(), free_port()
        child = self.spawn("twistd", *[a for p in ports
                                       for a in ("--listen", f"tcp:{p}:interface=127.0.0.1")])
        await self.wait_serving(child, ports[0])
        c = await self.client()
        await self.wait_serving(child, ports[1])
        msg_id = await self.push({"session": c.session}, "via the other port")
        await eventually(lambda: c.messages, what="the push")
        self.assertEqual([m["id"] for m in c.messages], [msg_id])

    @run
    async def test_config_file_and_command_line(self):
        """The file's settings apply; --port on the command line wins over its port."""
        file_port, cli_port = free_port(), free_port()
        path = self.write_config(f"[server]\nport = {file_port}\n"
                                 f"[limits]\nmax_message_bytes = 1000\n")
        child = self.spawn("twistd", "--config", path, "--port", str(cli_port))
        await self.wait_serving(child, cli_port)
        status, body = await self.http(
            "POST", "/api/push", raw=json.dumps({"to": {"all": True}, "data": "x" * 1000}).encode())
        self.assertEqual((status, body["error"]["code"]), (413, "too_large"))
        await self.push({"all": True}, "x" * 900)
        self.use_port(file_port)
        with self.assertRaises(ConnectError):
            await self.http("GET", "/healthz")

    @run
    async def test_a_second_server_on_a_busy_port_refuses_to_start(self):
        """With a pool (SO_REUSEPORT) or one process, a port another server
        listens on ends start-up with the same one line; the first serves on."""
        port = free_port()
        first = self.spawn("twistd", "--workers", "2", "--port", str(port), "--admin", "")
        await self.wait_serving(first, port, workers=2)
        lines = set()
        for workers in ("2", "0"):
            line = await self.check_refused(f"tcp:{port}", "--workers", workers, "--port",
                                            str(port), "--admin", "")
            lines.add(line)
        self.assertEqual(lines, {f"pushsvc: cannot listen on tcp:{port}:backlog=1024: "
                                 "[Errno 98] Address already in use"})
        clients = [await self.client(user="u") for _ in range(8)]
        msg_id = await self.push({"user": "u"}, "to all eight")
        await eventually(lambda: all(c.messages for c in clients), what="the push")
        self.assertEqual({c.messages[0]["id"] for c in clients}, {msg_id})

    # -- refusing bad input

    @run
    async def test_port_not_a_number(self):
        await self.check_refused("--port", "--port", "abc")

    @run
    async def test_port_out_of_range(self):
        await self.check_refused("--port", "--port", "70000")

    @run
    async def test_negative_workers(self):
        await self.check_refused("--workers", "--workers", "-1")

    @run
    async def test_bad_endpoint(self):
        await self.check_refused("--listen", "--listen", "nonsense:endpoint")

    @run
    async def test_ssl_endpoint_with_a_bad_key_file(self):
        """A key file that is missing (OSError) or not a key (OpenSSL's error)."""
        not_a_key = os.path.join(self.cwd, "key.pem")
        with open(not_a_key, "w") as f:
            f.write("not a key\n")
        line = await self.check_refused("--listen", "--listen", "ssl:0:privateKey=missing.pem")
        self.assertRegex(line, r"No such file or directory: '.*missing\.pem'")
        line = await self.check_refused("--listen", "--listen", f"ssl:0:privateKey={not_a_key}")
        self.assertIn(f"bad endpoint 'ssl:0:privateKey={not_a_key}'", line)

    @run
    async def test_missing_config_file(self):
        await self.check_refused("--config", "--config", "missing.toml")

    @run
    async def test_config_unknown_key(self):
        path = self.write_config("[limits]\nmax_conections = 5\n")
        await self.check_refused("limits.max_conections", "--config", path)

    @run
    async def test_config_wrong_type(self):
        path = self.write_config('[limits]\nmax_connections = "many"\n')
        await self.check_refused("limits.max_connections", "--config", path)

    @run
    async def test_config_bad_namespace_table(self):
        path = self.write_config('[namespaces.team]\njoin = "maybe"\n')
        line = await self.check_refused("namespaces.team.join", "--config", path)
        self.assertIn("must be one of open, token, proxy, hook, server", line)

    @run
    async def test_config_invalid_toml(self):
        path = self.write_config("[limits\nmax_connections = 5\n")
        await self.check_refused("--config", "--config", path)

    @run
    async def test_application_module_that_does_not_load(self):
        path = os.path.join(self.cwd, "broken.py")
        with open(path, "w") as f:
            f.write("def on_message(:\n")
        for workers in ("0", "1"):
            line = await self.check_refused("--app", "--workers", workers, "--app", path)
            self.assertIn("broken.py, line 1: SyntaxError", line)

    @run
    async def test_unknown_option(self):
        await self.check_refused("--bogus", "--bogus")

    @run
    async def test_twist_bad_option(self):
        await self.check_refused("--port", "--port", "abc", script="twist")

    @run
    async def test_pushsvc_bad_input(self):
        """The same one line, and status 2, as twistd pushsvc's."""
        for setting, args in [("--port", ("--port", "abc")), ("--bogus", ("--bogus",)),
                              ("--config", ("--config", "missing.toml")),
                              ("--workers", ("--workers", "-1")),
                              ("--listen", ("--listen", "nonsense:endpoint"))]:
            mine = await self.check_refused(setting, *args, script="pushsvc")
            twistds = await self.check_refused(setting, *args)
            self.assertEqual(mine, twistds)
            child = await self.run_to_end(*args)
            self.assertEqual(child.status, 2, child.output())

    @run
    async def test_pushsvc_port_in_use(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            line = await self.check_refused(f"cannot listen on tcp:{port}", "--port", str(port),
                                            script="pushsvc")
        self.assertIn("in use", line)

    @run
    async def test_unix_socket_in_a_missing_folder(self):
        for workers in ("0", "1"):
            await self.check_refused("cannot listen on unix:/nonexistent/pushsvc/s",
                                     "--workers", workers,
                                     "--listen", "unix:/nonexistent/pushsvc/s")

    @run
    async def test_port_in_use(self):
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]
            line = await self.check_refused(f"cannot listen on tcp:{port}", "--port", str(port))
        self.assertIn("in use", line)
