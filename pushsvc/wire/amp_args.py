"""AMP arguments of any size: an AMP value holds at most 64 KiB, so batches
and JSON results travel as ``BigBytes`` or ``Json``, split over as many keys
as they need."""

from __future__ import annotations

import json

from twisted.protocols import amp

CHUNK = amp.MAX_VALUE_LENGTH


def chunks(value: bytes) -> list[bytes]:
    """``value`` in AMP values: at least one, each at most CHUNK bytes."""
    return [value[i:i + CHUNK] for i in range(0, len(value), CHUNK)] or [b""]


def joined(name: bytes, strings) -> bytes:
    """The value of argument ``name`` split over ``strings`` (an AMP box)."""
    return b"".join([strings[b"%s.%d" % (name, i)] for i in range(int(strings[name]))])


def _put(name: bytes, strings, value: bytes) -> None:
    parts = chunks(value)
    strings[name] = b"%d" % len(parts)
    for i, chunk in enumerate(parts):
        strings[b"%s.%d" % (name, i)] = chunk


class BigBytes(amp.Argument):
    """Bytes of any length: ``name`` holds the chunk count, ``name.N`` the chunks."""

    def toBox(self, name, strings, objects, proto):
        _put(name, strings, objects[name.decode("ascii")])

    def fromBox(self, name, strings, objects, proto):
        objects[name.decode("ascii")] = joined(name, strings)


class Json(amp.Argument):
    """Any JSON value, of any size (split like BigBytes)."""

    def toBox(self, name, strings, objects, proto):
        value = objects[name.decode("ascii")]
        _put(name, strings, json.dumps(value, separators=(",", ":")).encode("utf-8"))

    def fromBox(self, name, strings, objects, proto):
        objects[name.decode("ascii")] = json.loads(joined(name, strings))
