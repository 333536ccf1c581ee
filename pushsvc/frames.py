"""Server frames, encoded: replies, errors, ``welcome`` and ``msg``, and
the history position a kept ``msg`` frame carries.  No I/O.

The frames themselves are listed in protocol.py, with the client frames
this module's replies answer; ``encode`` (JSON, as every frame is written)
is there too, for the values it encodes.
"""

from __future__ import annotations

from typing import Any

from .protocol import TOO_LARGE, Address, ProtocolError, encode


def error_frame(error: ProtocolError, ref: Any = None) -> bytes:
    frame: dict[str, Any] = {"op": "error", "code": error.code, "message": error.message}
    if ref is not None:
        frame["ref"] = ref
    return encode(frame)


def reply_frame(op: str, ref: Any = None, **fields: Any) -> bytes:
    """A reply such as ``ok`` or ``pong``, echoing ``ref`` when there is one."""
    frame: dict[str, Any] = {"op": op, **fields}
    if ref is not None:
        frame["ref"] = ref
    return encode(frame)


def welcome_frame(session_id: str, user: str | None, epoch: str | None = None,
                  ref: Any = None) -> bytes:
    """``welcome``: as ``reply_frame`` would encode it, built from parts (one
    per connection, so a connect storm writes many)."""
    parts = [b'{"op":"welcome","session":', encode(session_id), b',"user":',
             b"null" if user is None else encode(user)]
    if epoch is not None:
        parts += (b',"epoch":', encode(epoch))
    if ref is not None:
        parts += (b',"ref":', encode(ref))
    parts.append(b"}")
    return b"".join(parts)


_MSG_HEAD = b'{"op":"msg",'


def is_message(frame: bytes) -> bool:
    """Whether ``frame`` is a ``msg`` frame (only those are kept for a resume;
    not the ``joined``/``left`` events published to a group's members)."""
    return frame.startswith(_MSG_HEAD)


def with_position(frame: bytes, position: int) -> bytes:
    """A ``msg`` frame with its position in the history (``"pos"``) added."""
    if not frame.startswith(_MSG_HEAD):
        raise ValueError("not a msg frame")
    return b'%s"pos":%d,%s' % (_MSG_HEAD, position, frame[len(_MSG_HEAD):])


_POS_HEAD = _MSG_HEAD + b'"pos":'


def position_of(frame: bytes) -> int | None:
    """The history position in a ``msg`` frame, None when it has none."""
    if not frame.startswith(_POS_HEAD):
        return None
    start = len(_POS_HEAD)
    return int(frame[start:frame.index(b",", start)])


def message_frame(msg_id: str, to: Address, data: Any,
                  sender: dict[str, Any] | None = None,
                  max_data: int | None = None, to_text: bytes | None = None,
                  event: str | None = None, socket_id: str | None = None) -> bytes:
    """The ``msg`` frame, encoded once per message whoever receives it:
    ``{"op":"msg","id":..,"to":..,"event":..,"socket_id":..,"from":..,"data":..}``,
    ``data`` last.

    ``to_text`` is ``to`` encoded, when the caller has it.  ``event`` and
    ``socket_id`` are a Pusher event's name and the Pusher connection it is
    not for (docs/pusher.md); absent otherwise.  Raises ``too_large`` when
    ``data``, encoded, is longer than ``max_data``.
    """
    body = encode(data)
    if max_data is not None and len(body) > max_data:
        raise ProtocolError(TOO_LARGE, f"'data' is {len(body)} bytes encoded; "
                                       f"the limit is {max_data}")
    parts = [_MSG_HEAD, b'"id":', encode(msg_id), b',"to":', to_text or encode(to.to_json())]
    if event is not None:
        parts += (b',"event":', encode(event))
    if socket_id is not None:
        parts += (b',"socket_id":', encode(socket_id))
    if sender is not None:
        parts += (b',"from":', encode(sender))
    parts += (b',"data":', body, b"}")
    return b"".join(parts)
