"""Where a Redis Cluster keeps things: key slots, the logical shards' hash
tags, and the slot map read from ``CLUSTER SHARDS`` (or ``CLUSTER SLOTS``).
No I/O.

A ``redis+cluster://`` URL is ``[redis] cluster_shards`` logical shards (K).
Logical shard ``i`` is a whole ``RedisBroker`` (``redis_sharded``) whose
every key and channel starts with ``{TAG}``: its hash tag, so that they all
live in one slot, on whichever master holds that slot, and each Lua call
touches one slot.  The tags are chosen so that shard ``i``'s slot lies in
the ``i``-th K-th of the 16384 slots: a cluster made with ``redis-cli
--cluster create`` (even, contiguous ranges) gets its shards spread evenly
over its masters.  ``TAG`` is ``PREFIX`` (``[redis] prefix``), ``i``, ``.``
and the first number that puts it there; every node computes the same.
"""

from __future__ import annotations

__all__ = ["SLOTS", "key_slot", "shard_prefixes", "slot_map", "owners"]

SLOTS = 16384


def _table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
        table.append(crc & 0xFFFF)
    return table


_CRC = _table()


def crc16(data: bytes) -> int:
    """CRC16-CCITT (XModem), Redis Cluster's."""
    crc = 0
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ _CRC[((crc >> 8) ^ byte) & 0xFF]
    return crc


def key_slot(key: bytes) -> int:
    """The slot of ``key``: of its hash tag (the first ``{...}``, not empty) if any."""
    start = key.find(b"{")
    if start >= 0:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1:end]
    return crc16(key) % SLOTS


def shard_prefixes(prefix: str, count: int) -> list[str]:
    """The key prefix ``{TAG}`` of each of ``count`` logical shards."""
    if not 0 < count <= SLOTS:
        raise ValueError(f"the number of logical shards must be 1-{SLOTS}, got {count}")
    out = []
    for i in range(count):
        low, high = i * SLOTS // count, (i + 1) * SLOTS // count
        n = 0
        while not low <= key_slot(f"{prefix}{i}.{n}".encode()) < high:
            n += 1
        out.append(f"{{{prefix}{i}.{n}}}")
    return out


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def slot_map(answer, shards: bool = True) -> list[tuple[int, int, tuple[str, int]]]:
    """The slot ranges held by live masters, as ``(first, last, (host,
    port))``, from the answer to ``CLUSTER SHARDS`` (``shards``) or to
    ``CLUSTER SLOTS``.  ValueError for an answer that is neither."""
    ranges = []
    try:
        if not shards:
            for entry in answer:
                host, port = entry[2][0], entry[2][1]
                ranges.append((int(entry[0]), int(entry[1]), (_text(host), int(port))))
            return ranges
        for shard in answer:
            fields = dict(zip(map(_text, shard[::2]), shard[1::2]))
            slots = fields["slots"]
            for node in fields["nodes"]:
                info = dict(zip(map(_text, node[::2]), node[1::2]))
                if _text(info["role"]) != "master" or _text(info.get("health")) != "online":
                    continue
                host = _text(info.get("endpoint") or b"?")
                if host in ("?", ""):
                    host = _text(info["ip"])
                port = int(info.get("port") or info["tls-port"])
                ranges += [(int(slots[k]), int(slots[k + 1]), (host, port))
                           for k in range(0, len(slots), 2)]
    except (TypeError, KeyError, IndexError, ValueError) as e:
        raise ValueError(f"not a cluster slot map: {e!r}") from e
    return ranges


def owners(ranges, slots: list[int]) -> list[tuple[str, int] | None]:
    """The master holding each of ``slots`` (None: none holds it now)."""
    out = []
    for slot in slots:
        out.append(next((address for first, last, address in ranges
                         if first <= slot <= last), None))
    return out
