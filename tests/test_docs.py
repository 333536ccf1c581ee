"""The examples of README.md and docs/http-api.md, run against a real server.

The examples are read out of the markdown (fenced blocks), so an edit to a
doc is tested as it stands:

- README.md, "Quick start": the server as `make run` starts it (the command
  ``make -n run`` prints, on a free port), the client block, the curl block,
  then the two output blocks that follow it: what the curls print and what
  the client prints. Then SIGTERM: the client sees the close and exits 0, and
  so does the server. Also every ``sh`` block whose lines all start a server
  (``.venv/bin/pushsvc``, ``twistd``, ``twist``): each line serves /healthz on
  a free port and stops on SIGTERM with status 0.
- docs/http-api.md: every ``sh`` block with a ``curl``, against one server
  (``--workers 2 --node web1``, API keys in ``$KEY`` and ``$READ_KEY``), each
  in the same scene of clients, made anew before each example (SCENE). The
  fenced block right after it (only blank lines between) is its output.

Commands run with bash; ``localhost:8080`` becomes the free port,
``.venv/bin/`` the folder of the Python running the tests, ``etc/`` the
checkout's. Outputs are compared after masking what changes from run to run:
ids (numbered in order of appearance, so the same id twice stays the same),
epochs, positions (``pos``), the Date header, Content-Length (ids vary in
length) and Twisted's version; JSON
outputs are compared as JSON, with lists of objects in any order (and, for
the HTTP API's answers, the keys of objects too: a pool's workers answer in
any order).

Markers in the markdown, an HTML comment just before a command block:
``<!-- not run: REASON -->`` skips it (keep those few); ``<!-- excerpt:
REASON -->`` says its output block shows part of the real one: the JSON keys
shown, or the text lines shown in that order (``...`` for the rest), numbers
not compared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.client import Agent, readBody
from twisted.web.http_headers import Headers
from twisted.trial.unittest import SkipTest

from tests.helpers import BIN, Child, ChildTestCase, eventually, free_port, run

ROOT = Path(__file__).resolve().parent.parent
DOC_PORT = "8080"


# -- the markdown

@dataclass
class Block:
    lang: str
    text: str
    line: int                       # 1-based line of the opening fence
    markers: dict[str, str] = field(default_factory=dict)  # "not run"/"excerpt": reason
    follows: bool = False           # only blank lines between this and the block before


MARKER = re.compile(r"<!--\s*(not run|excerpt)\s*:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\S*)\s*$")


def fenced_blocks(path: Path) -> list[Block]:
    """Every fenced block of the markdown file, with the markers before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    markers: dict[str, str] = {}
    blank_since_block = True  # no prose since the previous block's end
    i = 0
    while i < len(lines):
        line = lines[i]
        m = FENCE.match(line)
        if m:
            indent, lang = m.group(1), m.group(2)
            body = []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i][len(indent):] if lines[i].startswith(indent)
                            else lines[i])
                i += 1
            blocks.append(Block(lang, "\n".join(body) + "\n", i - len(body), markers,
                                follows=bool(blocks) and blank_since_block))
            markers, blank_since_block = {}, True
        else:
            marker = MARKER.search(line)
            if marker:
                markers[marker.group(1)] = marker.group(2)
            elif line.strip():
                blank_since_block = False
                markers = {}
        i += 1
    return blocks


def examples(blocks: list[Block], is_command) -> list[tuple[Block, Block | None]]:
    """(command block, its output block or None) for each command block."""
    found = []
    for n, block in enumerate(blocks):
        if block.lang in ("sh", "bash", "console") and is_command(block.text):
            after = blocks[n + 1] if n + 1 < len(blocks) else None
            output = after if after is not None and after.follows and after.lang not in (
                "sh", "bash", "console") else None
            found.append((block, output))
    return found


# -- comparing outputs

ID = re.compile(r"\b[A-Za-z0-9_-]{1,32}\.\d+\.[0-9a-z]+\.M?[0-9a-z]+\b")
MASKS = [
    (re.compile(r'"epoch":\s*"[^"]*"'), "epoch"),
    (re.compile(r'"pos":\s*\d+'), "pos"),
    (ID, "id"),
]


def mask(text: str) -> str:
    """Ids and epochs numbered in order of appearance; positions, the Date
    header and Twisted's version replaced."""
    seen: dict[str, dict[str, str]] = {}

    def numbered(kind):
        def replace(m):
            names = seen.setdefault(kind, {})
            return names.setdefault(m.group(0), f"<{kind}{len(names) + 1}>")
        return replace

    for pattern, kind in MASKS:
        text = pattern.sub(numbered(kind), text)
    text = re.sub(r"(?m)^Date: .*$", "Date: <date>", text)
    text = re.sub(r"(?m)^Content-Length: \d+", "Content-Length: <n>", text)  # the id's length
    return re.sub(r"(?m)^Server: TwistedWeb/\S+", "Server: TwistedWeb/<version>", text)


def json_values(text: str) -> list | None:
    """The JSON values in ``text`` one after the other, or None if it is not JSON."""
    decoder, values, i = json.JSONDecoder(), [], 0
    text = text.strip()
    try:
        while i < len(text):
            value, i = decoder.raw_decode(text, i)
            values.append(value)
            while i < len(text) and text[i].isspace():
                i += 1
    except ValueError:
        return None
    return values or None


def canonical(value, excerpt_of=None):
    """``value`` with its lists of objects sorted; with ``excerpt_of`` (the
    shown value), only the keys the shown value has, numbers as 0."""
    if excerpt_of is not None:
        if isinstance(value, dict) and isinstance(excerpt_of, dict):
            return {k: canonical(value[k], excerpt_of[k]) if k in value else "<missing>"
                    for k in excerpt_of}
        if isinstance(value, list) and isinstance(excerpt_of, list) \
                and len(value) == len(excerpt_of):
            return [canonical(v, s) for v, s in zip(value, excerpt_of)]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return 0
        return value
    if isinstance(value, dict):
        return {k: canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        items = [canonical(v) for v in value]
        if all(isinstance(v, dict) for v in items):
            items.sort(key=lambda v: ID.sub("<id>", json.dumps(v, sort_keys=True)))
        return items
    return value


def zero_numbers(value):
    if isinstance(value, dict):
        return {k: zero_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [zero_numbers(v) for v in value]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return 0
    return value


def comparable(shown: str, actual: str, excerpt: bool = False,
               ordered: bool = False) -> tuple[str, str]:
    """(shown, actual) in the form in which they must be equal; JSON objects'
    keys in any order unless ``ordered``."""
    shown_values, actual_values = json_values(shown), json_values(actual)
    if shown_values is not None and actual_values is not None:
        if excerpt and len(shown_values) == len(actual_values):
            actual_values = [canonical(a, s) for a, s in zip(actual_values, shown_values)]
            shown_values = [zero_numbers(s) for s in shown_values]
        dump = lambda values: "\n".join(  # noqa: E731
            json.dumps(canonical(v), sort_keys=not ordered, ensure_ascii=False,
                       separators=(",", ":")) for v in values)
        return mask(dump(shown_values)), mask(dump(actual_values))
    shown_lines = mask(shown).rstrip("\n").splitlines()
    actual_lines = mask(actual.replace("\r\n", "\n")).rstrip("\n").splitlines()
    if not excerpt:
        return "\n".join(shown_lines), "\n".join(actual_lines)
    number = re.compile(r"(?<![\w.-])-?\d+(\.\d+)?(e[+-]?\d+)?(?![\w.-])")
    shown_lines = [number.sub("<n>", l) for l in shown_lines if l.strip() != "..."]
    actual_lines = [number.sub("<n>", l) for l in actual_lines]
    # The shown lines must appear in this order among the real ones.
    rest = iter(actual_lines)
    found = [l for l in shown_lines if any(l == a for a in rest)]
    return "\n".join(shown_lines), "\n".join(found)


# -- running commands

def localize(command: str, port: int) -> str:
    """A command of the docs, for this checkout and this test's server."""
    command = command.replace(f"localhost:{DOC_PORT}", f"localhost:{port}")
    command = re.sub(rf"(--port[ =]|tcp:){DOC_PORT}\b", rf"\g<1>{port}", command)
    command = re.sub(r"(?<![\w/.])\.venv/bin/", BIN + "/", command)
    return re.sub(r"(?<![\w/.])etc/", str(ROOT / "etc") + "/", command)


SERVER = re.compile(r"^\.venv/bin/(pushsvc|twistd .*\bpushsvc|twist pushsvc)(?=\s|$)")


def server_lines(text: str) -> list[str] | None:
    """The lines of a block that only starts servers, or None."""
    lines = [l for l in text.splitlines() if l.strip()]
    return lines if lines and all(SERVER.match(l) for l in lines) else None


class DocsTestCase(ChildTestCase):

    def setUp(self):
        super().setUp()
        if shutil.which("curl") is None:
            if os.environ.get("CI") == "true":
                self.fail("curl is missing: the docs' examples need it")
            raise SkipTest("curl is missing")

    def start(self, command: str, env: dict[str, str] | None = None) -> Child:
        """Run a shell command as a child in self.cwd; SIGKILLed at cleanup
        (the group, for a server's workers) if it is still running."""
        child = Child()
        reactor.spawnProcess(child, "/bin/bash", ["bash", "-c", command],
                             env={**os.environ, **(env or {})}, path=self.cwd)
        self.addCleanup(child.kill)
        return child

    async def sh(self, command: str, env: dict[str, str] | None = None) -> str:
        """Run a shell command to its end; its stdout (it must exit 0)."""
        out, err, code = await getProcessOutputAndValue(
            "/bin/bash", ["-c", command], env={**os.environ, **(env or {})}, path=self.cwd)
        self.assertEqual(code, 0, f"{command}\n{out.decode()}{err.decode()}")
        return out.decode()

    async def wait_ready(self, child: Child, port: int, command: str,
                         headers: dict[str, str] | None = None) -> None:
        """/healthz answers, and every worker the command asks for accepts
        clients (GET /metrics: pushsvc_workers); a SIGTERM in the middle of
        the pool's start-up is another test's matter."""
        await self.wait_serving(child, port)
        m = re.search(r"--workers[ =](\d+)", command)
        workers = max(int(m.group(1)), 1) if m else os.cpu_count() or 1
        deadline = reactor.seconds() + 15
        while True:
            response = await Agent(reactor).request(
                b"GET", f"http://127.0.0.1:{port}/metrics".encode(),
                Headers({k: [v] for k, v in (headers or {}).items()}))
            body = (await readBody(response)).decode()
            if f"\npushsvc_workers {workers}.0\n" in body:
                return
            if reactor.seconds() > deadline or child.done:
                self.fail(f"{command}: not {workers} workers ready:\n{child.output()}")
            await deferLater(reactor, 0.05)

    async def stop(self, child: Child) -> None:
        """SIGTERM, then it must exit 0 without a traceback."""
        child.transport.signalProcess("TERM")
        self.assertEqual(await self.wait_exit(child), 0, child.output())
        self.assertNotIn("Traceback", child.output())

    def check_output(self, where: str, shown: Block, actual: str,
                     excerpt: bool = False, ordered: bool = False) -> None:
        expected, got = comparable(shown.text, actual, excerpt, ordered)
        self.assertEqual(got, expected, f"{where}: the output differs from the doc "
                                        f"(masked: ids, epochs, pos, dates).\n"
                                        f"--- the doc shows:\n{shown.text}"
                                        f"--- the command printed:\n{actual}")


# -- README.md

class ReadmeTests(DocsTestCase):

    timeout = 120

    @run
    async def test_quick_start(self):
        blocks = fenced_blocks(ROOT / "README.md")
        client_block = next(b for b in blocks if "from pushsvc.client import" in b.text)
        n = blocks.index(client_block)
        curl_index = next(i for i in range(n + 1, len(blocks)) if "curl " in blocks[i].text)
        curl_block, curl_output, client_output = blocks[curl_index:curl_index + 3]
        self.assertNotIn(curl_output.lang, ("sh", "bash"))
        self.assertNotIn(client_output.lang, ("sh", "bash"))

        port = free_port()
        # The server, as `make run` starts it.
        planned = await self.sh(f"make -s -n -C {ROOT} run PORT={port}")
        run_line = planned.strip().splitlines()[-1]
        self.assertTrue(run_line.startswith(".venv/bin/pushsvc "), planned)
        server = self.start("exec " + localize(run_line, port))
        await self.wait_ready(server, port, run_line)

        client = self.start(localize(client_block.text, port))
        await eventually(lambda: client.stdout.count(b"\n") >= 4 or client.done,
                         what="the client's welcome, auth and join")
        self.assertFalse(client.done, client.output())

        curls = await self.sh(localize(curl_block.text, port))
        self.check_output("README.md, what the curls print", curl_output, curls,
                          ordered=True)
        lines = len(client_output.text.strip().splitlines())
        await eventually(lambda: client.stdout.count(b"\n") >= lines or client.done,
                         what="the pushed messages at the client")
        self.check_output("README.md, what the client prints", client_output,
                          client.stdout.decode(), ordered=True)

        # "Ctrl-C (or SIGTERM) stops the server, which first closes every
        # client with code 1001 and then exits with status 0."
        await self.stop(server)
        self.assertEqual(await self.wait_exit(client), 0, client.output())

    @run
    async def test_commands_that_start_a_server(self):
        blocks = [b for b in fenced_blocks(ROOT / "README.md")
                  if b.lang == "sh" and "not run" not in b.markers and server_lines(b.text)]
        self.assertTrue(blocks, "README.md shows no command that starts the server")
        for block in blocks:
            for line in server_lines(block.text):
                port = free_port()
                server = self.start("exec " + localize(line, port))
                await self.wait_ready(server, port, line)
                await self.stop(server)


# -- docs/http-api.md

# The scene each example of docs/http-api.md runs in: the session ids the doc
# shows, and what that session is. alice has two sessions, the first in lobby
# and room-7 and tagged vip; an anonymous session is in lobby.
SCENE = {
    "web1.0.mwvkucn7594s1.1f": {"user": "alice", "groups": ["lobby", "room-7"], "tags": ["vip"]},
    "web1.0.mwvkucn7594s1.20": {"user": None, "groups": ["lobby"], "tags": []},
    "web1.0.mwvkucn7594s1.21": {"user": "alice", "groups": [], "tags": []},
}
KEYS = {"KEY": "doc-key-1", "READ_KEY": "doc-read-key-1"}


class HttpApiTests(DocsTestCase):

    timeout = 120

    async def make_scene(self) -> dict[str, str]:
        """Connect SCENE's sessions; {the doc's session id: the real one}."""
        real = {}
        for doc_id, what in SCENE.items():
            c = await self.client(user=what["user"], groups=tuple(what["groups"]))
            for tag in what["tags"]:
                status, body = await self.http(
                    "POST", "/api/tag", {"session": c.session, "tag": tag},
                    headers={"Authorization": f"Bearer {KEYS['KEY']}"})
                self.assertEqual((status, body), (200, {"sessions": 1}))
            real[doc_id] = c.session
            self.scene_clients.append(c)
        return real

    async def end_scene(self) -> None:
        for c in self.scene_clients:
            if c.close_code is None and c.state == c.STATE_OPEN:
                await c.disconnect()
        self.scene_clients = []
        # The server has seen them go: no session is left.
        deadline = reactor.seconds() + 10
        while True:
            status, body = await self.http(
                "GET", "/api/stats", headers={"Authorization": f"Bearer {KEYS['KEY']}"})
            if body["sessions"] == 0:
                return
            self.assertLess(reactor.seconds(), deadline, body)
            await deferLater(reactor, 0.02)

    @run
    async def test_curl_examples(self):
        found = examples(fenced_blocks(ROOT / "docs" / "http-api.md"),
                         lambda text: "curl " in text)
        self.assertGreater(len(found), 10, "docs/http-api.md: where are the curl examples?")
        config = os.path.join(self.cwd, "keys.toml")
        with open(config, "w") as f:
            f.write(f'[http]\napi_keys = ["{KEYS["KEY"]}"]\n'
                    f'api_read_keys = ["{KEYS["READ_KEY"]}"]\n')
        port = free_port()
        command = f"{BIN}/pushsvc --port {port} --workers 2 --node web1 --config {config}"
        server = self.start("exec " + command)
        await self.wait_ready(server, port, command,
                              {"Authorization": f"Bearer {KEYS['READ_KEY']}"})
        self.scene_clients = []
        ran = 0
        for command, output in found:
            if "not run" in command.markers:
                continue
            real = await self.make_scene()
            text = localize(command.text, port)
            for doc_id, real_id in real.items():
                text = text.replace(doc_id, real_id)
            printed = await self.sh(text, env=KEYS)
            for doc_id, real_id in real.items():
                printed = printed.replace(real_id, doc_id)
            where = f"docs/http-api.md, line {command.line}"
            if output is None:
                self.assertTrue(printed.strip(), f"{where}: printed nothing")
            else:
                self.check_output(where, output, printed, "excerpt" in command.markers)
            await self.end_scene()
            ran += 1
        self.assertEqual(ran, len(found) - sum("not run" in c.markers for c, _ in found))
        await self.stop(server)
