"""Listen to pushsvc from asyncio code, with PushClient (docs/clients.md).

PushClient runs on Twisted; asyncio code uses it through Twisted's asyncio
reactor, which runs on the asyncio event loop:

1. make the event loop and install ``asyncioreactor`` on it, before anything
   imports ``twisted.internet.reactor``;
2. run the asyncio ``main()`` as a task of that loop with ``react`` (which
   runs the loop until the task is done);
3. turn each Deferred PushClient returns into an asyncio Future with
   ``Deferred.asFuture(loop)`` and await that.

    .venv/bin/python examples/listen_asyncio.py ws://localhost:8080/ws --user alice --group lobby

Same options and output as examples/listen.py.
"""

import asyncio
import json
import os
import sys

from twisted.internet import asyncioreactor

LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)
asyncioreactor.install(LOOP)  # first: before anything imports the reactor

from twisted.internet.defer import Deferred  # noqa: E402
from twisted.internet.task import react  # noqa: E402

from pushsvc.client import PushClient  # noqa: E402


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from listen import arguments, describe  # noqa: E402  the same options and words as listen.py


async def main(args):
    loop = asyncio.get_running_loop()
    client = PushClient(args.url, user=args.user, token=args.token, groups=args.group)
    queue: asyncio.Queue = asyncio.Queue()  # messages, from callbacks to the coroutine
    client.on("message", queue.put_nowait)
    client.on("gap", lambda gap: print(f"gap: missed messages in {gap['channels']}",
                                       file=sys.stderr))
    client.on("state", lambda change: print(change["state"], file=sys.stderr, flush=True))
    client.on("joined", lambda frame: print(describe(frame), file=sys.stderr, flush=True))
    client.on("left", lambda frame: print(describe(frame), file=sys.stderr, flush=True))

    await client.start().asFuture(loop)
    if args.say and args.group:
        msg_id = await client.send({"group": args.group[0]}, {"text": args.say}).asFuture(loop)
        print(f"sent {msg_id}", file=sys.stderr)
    try:
        received = 0
        while not args.count or received < args.count:
            msg = await queue.get()
            print(json.dumps(msg), flush=True)
            received += 1
    finally:
        await client.stop().asFuture(loop)


if __name__ == "__main__":
    args = arguments()
    # (A task of LOOP itself: when react calls this, the loop is not running yet.)
    react(lambda reactor: Deferred.fromFuture(LOOP.create_task(main(args))))
