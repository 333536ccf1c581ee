"""WebSocket conformance: the Autobahn|Testsuite cases (groups 1-7, 9 and 10)
against pushsvc's own WebSocket edge, so that a framing change is checked.

The cases run with kosoku (a runner of Autobahn's case files, in the test
extras) in a child process, tests/kosoku_child.py, against a real server on
a loopback port whose connections echo (tests/conformance.py: pushsvc's
protocol with an echoing ``onMessage`` and its write path).  Without kosoku
the tests are skipped, saying so; with ``CI=true`` that is a failure.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys

from twisted.internet import reactor

from pushsvc import websocket
from tests.conformance import (CASES, ECHO_LIMITS, GROUPS, MAX_FRAGMENTS, failures,
                               make_echo, verdict)
from tests.helpers import Child, ServerTestCase, run

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kosoku_child.py")
DEADLINE = 240.0  # seconds for the child's whole run (about 40 on a loaded 2-core machine)


class ConformanceTests(ServerTestCase):
    timeout = DEADLINE + 30

    def setUp(self):
        if importlib.util.find_spec("kosoku") is None:
            reason = "the conformance cases need kosoku (pip install -e '.[test]')"
            if os.environ.get("CI") == "true":
                self.fail(reason + " (CI=true, so this is a failure, not a skip)")
            self.skipTest(reason)

    async def run_cases(self, cases: tuple[str, ...]) -> list[dict]:
        """Run ``cases`` against the server's /ws in the child; one dict per case."""
        child = Child()
        reactor.spawnProcess(child, sys.executable,
                             [sys.executable, CHILD, self.url, ",".join(cases), ""],
                             env=os.environ.copy())
        self.addCleanup(child.kill)
        try:
            status = await child.exited().addTimeout(DEADLINE, reactor)
        except Exception:
            self.fail(f"kosoku still running after {DEADLINE} s:\n{child.output()[-3000:]}")
        self.assertEqual(status, 0, child.output()[-3000:])
        return [json.loads(line) for line in child.stdout.decode().splitlines()]

    @run
    async def test_every_case_passes(self):
        """Each case of groups 1-7, 9 and 10 passes (OK, NON-STRICT or
        INFORMATIONAL for both the messages and the close); a failure lists
        the cases that did not, by id, with Autobahn's verdicts."""
        self.patch(websocket, "MAX_FRAGMENTS", MAX_FRAGMENTS)
        make_echo(self.start_server(**ECHO_LIMITS).ws_factory)
        cases = await self.run_cases(CASES)
        self.assertEqual({case["id"].split(".")[0] for case in cases}, GROUPS)
        if failures(cases):
            self.fail(failures(cases))

    @run
    async def test_a_server_that_does_not_echo_fails(self):
        """The check can fail: against the JSON protocol of /ws (a welcome
        first, then an error for a text that is not JSON or a binary frame)
        the echo cases 1.1.1 and 1.2.1 are FAILED, and named."""
        self.start_server()
        cases = await self.run_cases(("1.1.1", "1.2.1"))
        self.assertEqual([(case["id"], verdict(case)) for case in cases],
                         [("1.1.1", False), ("1.2.1", False)])
        self.assertIn("2 of 2 cases failed: 1.1.1 1.2.1", failures(cases))
