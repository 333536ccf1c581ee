"""AMP arguments of any size: an AMP value holds at most 64 KiB, so batches
and JSON results travel as ``BigBytes`` or ``Json``, split over as many keys
as they need."""

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
