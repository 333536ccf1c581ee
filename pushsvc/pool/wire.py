"""AMP commands between the master (hub) and its workers.

An AMP value holds at most 64 KiB, so frames and JSON results travel as
``BigBytes``, split over as many keys as they need.  Fire-and-forget commands
(``requiresAnswer = False``) carry the message traffic; AMP keeps them in order
on the pipe, so a worker's subscribe always reaches the hub before its next
publish.
"""

from __future__ import annotations

import json
from twisted.protocols import amp

CHUNK = amp.MAX_VALUE_LENGTH


def _put(name: bytes, strings, value: bytes) -> None:
    chunks = [value[i:i + CHUNK] for i in range(0, len(value), CHUNK)] or [b""]
    strings[name] = b"%d" % len(chunks)
    for i, chunk in enumerate(chunks):
        strings[b"%s.%d" % (name, i)] = chunk


def _get(name: bytes, strings) -> bytes:
    return b"".join(strings[b"%s.%d" % (name, i)] for i in range(int(strings[name])))


class BigBytes(amp.Argument):
    """Bytes of any length: ``name`` holds the chunk count, ``name.N`` the chunks."""

    def toBox(self, name, strings, objects, proto):
        _put(name, strings, objects[name.decode("ascii")])

    def fromBox(self, name, strings, objects, proto):
        objects[name.decode("ascii")] = _get(name, strings)


class Json(amp.Argument):
    """Any JSON value, of any size (split like BigBytes)."""

    def toBox(self, name, strings, objects, proto):
        value = objects[name.decode("ascii")]
        _put(name, strings, json.dumps(value, separators=(",", ":")).encode("utf-8"))

    def fromBox(self, name, strings, objects, proto):
        objects[name.decode("ascii")] = json.loads(_get(name, strings))


# -- worker -> master ------------------------------------------------------

class Hello(amp.Command):
    """A worker is up: its index and the owner name in its session ids."""
    arguments = [(b"index", amp.Integer()), (b"owner", amp.Unicode())]
    response: list = []


class Subscribe(amp.Command):
    """Answered once the hub routes ``channels`` to the worker."""
    arguments = [(b"channels", amp.ListOf(amp.Unicode()))]
    response: list = []


class Unsubscribe(amp.Command):
    arguments = [(b"channels", amp.ListOf(amp.Unicode()))]
    requiresAnswer = False


class Publish(amp.Command):
    """A message for every other worker subscribed to one of ``channels``.

    ``to`` is the address as JSON text: the hub passes it on without decoding.
    ``channels`` is a JSON list: an address may name more than 64 KiB of them.
    """
    arguments = [(b"channels", Json()), (b"id", amp.Unicode()),
                 (b"to", BigBytes()), (b"frame", BigBytes())]
    requiresAnswer = False


class RunCommand(amp.Command):
    """Run a server-side command on every worker; the list of their results."""
    arguments = [(b"name", amp.Unicode()), (b"args", Json())]
    response = [(b"results", Json())]


# -- master -> worker ------------------------------------------------------

class Deliver(amp.Command):
    """A message for this worker's sessions; ``to`` is the address as JSON text."""
    arguments = [(b"id", amp.Unicode()), (b"to", BigBytes()), (b"frame", BigBytes())]
    requiresAnswer = False


class Perform(amp.Command):
    """Run a command on this worker's sessions."""
    arguments = [(b"name", amp.Unicode()), (b"args", Json())]
    response = [(b"result", Json())]
