"""An echo endpoint on pushsvc's own WebSocket edge for the Autobahn|Testsuite
conformance cases (tests/test_conformance.py): the cases run, the limits
raised for them, and how a case's verdict is read.

The cases need a server that sends back each message it gets, text and
binary.  ``/ws`` speaks JSON and refuses binary frames, so ``make_echo``
gives a server's ``PushServerFactory`` a subclass of its
``PushServerProtocol`` that differs in two things only: ``onMessage``
echoes the message (after the same session, state and rate checks) through
``send_prepared``, the write path of every frame pushsvc sends (end-of-turn
flush, ``FLUSH_AT``, the flow watch, ``_write`` straight to the socket), and
the engine's own frames (the welcome) are not sent.  Everything else is
production's: the upgrade through the site, the engine session, the close
handling, the fragment count, ``sendData``.

The cases run in a child, tests/kosoku_child.py.
"""

from __future__ import annotations

from autobahn.websocket.protocol import PreparedMessage

from pushsvc.websocket import OPEN

# The cases run: groups 1-7 (framing, pings, reserved bits, opcodes,
# fragmentation, UTF-8, closing), 9 (big messages, big messages in many
# fragments or many writes, 1000 messages in a row) and 10
# (auto-fragmentation), all of them.  11-13 (permessage-deflate) are not
# run: pushsvc never negotiates compression.
CASES = ("1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "9.*", "10.*")
GROUPS = frozenset(case.split(".")[0] for case in CASES)

# Autobahn's verdicts that pass (a MUST kept; NON-STRICT: a SHOULD not kept;
# INFORMATIONAL: the spec leaves it open), for the message exchange and for
# the closing handshake.
PASSING = frozenset({"OK", "NON-STRICT", "INFORMATIONAL"})

# The echo server's limits, where pushsvc's defaults would stop the cases
# (the others, max_buffered_bytes among them, are the defaults):
ECHO_LIMITS = {
    # 9.1 / 9.2 send messages up to 16 MiB (the most pushsvc allows); the
    # default is 64 KiB.
    "max_message_bytes": 16 * 1024 * 1024,
    # 9.7 / 9.8 send 1000 messages back to back, 9.3 / 9.4 thousands of
    # fragments (every 16th costs a token); the default (50 a second, a
    # burst of 200) refuses them and closes with 1008.  0: no limit.
    "messages_per_second": 0.0,
}
# 9.3.1 / 9.4.1 send one 4 MiB message in 64 B fragments: 65536 of them,
# over websocket.MAX_FRAGMENTS (1024, which closes with 1009); the test
# raises it for its run.
MAX_FRAGMENTS = 65536


class _Echo:
    """Mixed in before the factory's protocol class (see make_echo)."""

    def onMessage(self, payload, isBinary):
        if self.session is None or self.state != OPEN:
            return
        if not self._within_rate(payload, isBinary):
            return
        self.send_prepared(PreparedMessage(payload, isBinary, False, True))

    def send_frame(self, frame: bytes) -> None:
        """The engine's frames (the welcome at the open): not for an echo client."""


def make_echo(factory) -> None:
    """Have ``factory`` (a PushServerFactory) build echo connections from now on."""
    factory.protocol = type("EchoProtocol", (_Echo, factory.protocol), {})


def verdict(case: dict) -> bool:
    """Whether a case (as tests/kosoku_child.py prints it) passed as Autobahn
    defines it: both verdicts OK, NON-STRICT or INFORMATIONAL."""
    return case["behavior"] in PASSING and case["behavior_close"] in PASSING


def failures(cases: list[dict]) -> str:
    """The cases that did not pass, by id, with Autobahn's verdicts and why
    (empty when every case passed)."""
    failed = [case for case in cases if not verdict(case)]
    if not failed:
        return ""
    lines = [f"{len(failed)} of {len(cases)} cases failed: "
             + " ".join(case["id"] for case in failed)]
    for case in failed:
        lines.append(f"  {case['id']}: {case['behavior']} ({case['result'][:200]}); "
                     f"close {case['behavior_close']} ({case['result_close'][:200]}); "
                     f"close code from pushsvc {case['remote_close_code']}, "
                     f"from kosoku {case['local_close_code']}")
    return "\n".join(lines)
