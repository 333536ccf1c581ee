"""Listen to pushsvc from Twisted code, with PushClient: it reconnects and
resumes by itself (docs/clients.md).

    .venv/bin/python examples/listen.py ws://localhost:8080/ws --user alice --group lobby

prints each message as a line of JSON on stdout (and the connection's states,
and the groups' joined/left frames, on stderr); then, in another terminal:

    curl -X POST localhost:8080/api/push -d '{"to":{"group":"lobby"},"data":"hello"}'

Stop the server and start it again: the client comes back by itself. With
``--count N`` it exits after N messages; ``--say TEXT`` sends TEXT to the
first group once it is ready.
"""

import argparse
import json
import sys

from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.internet.task import react

from pushsvc.client import PushClient


def arguments():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", nargs="?", default="ws://localhost:8080/ws")
    parser.add_argument("--user", help="authenticate as this user (auth.mode = none)")
    parser.add_argument("--token", help="authenticate with this token")
    parser.add_argument("--group", action="append", default=[], help="join this group")
    parser.add_argument("--count", type=int, default=0, help="exit after this many messages")
    parser.add_argument("--say", help="send this to the first group once ready")
    parser.add_argument("--ca", help="for wss://: trust the certificate(s) in this PEM "
                                     "file (a self-signed server's; SSL_CERT_FILE works too)")
    return parser.parse_args()


def describe(frame) -> str:
    """A joined/left frame in words: a member event (it has a session) or
    news about this client's own groups (it has a reason)."""
    if "session" in frame:
        return f"{frame['group']}: {frame['user'] or 'someone anonymous'} {frame['op']}"
    return f"{frame['op']} {frame['group']} ({frame['reason']})"


async def main(reactor, args):
    tls = None
    if args.ca:
        with open(args.ca, "rb") as f:
            trust = Certificate.loadPEM(f.read())
        tls = optionsForClientTLS(urlsplit(args.url).hostname, trustRoot=trust)
    client = PushClient(args.url, user=args.user, token=args.token, groups=args.group,
                        tls=tls)
    done = Deferred()
    received = 0

    @client.on("message")
    def message(msg):
        nonlocal received
        print(json.dumps(msg), flush=True)
        received += 1
        if args.count and received >= args.count and not done.called:
            done.callback(None)

    @client.on("gap")
    def gap(gap):
        print(f"gap: missed messages in {gap['channels']}: reload them", file=sys.stderr)

    client.on("joined", lambda frame: print(describe(frame), file=sys.stderr, flush=True))
    client.on("left", lambda frame: print(describe(frame), file=sys.stderr, flush=True))

    @client.on("state")
    def state(change):
        detail = ""
        if change["state"] in ("waiting", "closed"):
            reason = f": {change['reason']}" if change.get("reason") else ""
            again = f", again in {change['delay']:.1f} s" if "delay" in change else ""
            detail = f" (code {change['code']}{reason}{again})"
        print(f"{change['state']}{detail}", file=sys.stderr, flush=True)
        if change["state"] == "closed" and not done.called:
            done.callback(None)  # refused (1008) or kicked (4000)

    await client.start()
    if args.say and args.group:
        await client.send({"group": args.group[0]}, {"text": args.say})
    try:
        await done
    finally:
        await client.stop()


if __name__ == "__main__":
    args = arguments()
    react(lambda reactor: ensureDeferred(main(reactor, args)))
