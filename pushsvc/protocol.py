"""The wire format: parse and check client frames, encode server frames.  No I/O.

Client frames are JSON objects with an ``op``; an optional ``ref`` (a JSON
scalar) is echoed in the reply::

    {"op":"auth","user":"u1"}            development mode (auth off)
    {"op":"auth","token":"..."}          signed token (when configured)
    {"op":"join","group":"g1"}           or with "token" (a subscription token)
                                         and "data" (for the backend or on_join)
    {"op":"leave","group":"g1"}
    {"op":"presence","group":"g1"}       who is in the group
    {"op":"send","to":ADDRESS,"data":ANY}
    {"op":"ping"}

Server frames::

    {"op":"welcome","session":"...","user":null|"u1"}
    {"op":"ok","ref":...}
    {"op":"pong","ref":...}
    {"op":"msg","id":"...","to":ADDRESS,"data":ANY,"from":{...}}
    {"op":"joined"|"left","group":"g1","reason":"server"|"destroyed"|...}   you
    {"op":"joined"|"left","group":"g1","session":"...","user":...}         another member
    {"op":"presence","group":"g1","sessions":N,"anonymous":N,"users":{...}}
    {"op":"error","ref":...,"code":"...","message":"..."}

An ADDRESS is an object with one or more of ``session``, ``user``, ``group``,
``tag`` (each a name or a list of names) and ``all`` (``true``).  A message
goes to the union of what the keys select, once per session.

Every problem is raised as ``ProtocolError(code, message)``, which the I/O
edges turn into an ``error`` frame or an HTTP error body in one place each.
"""

from __future__ import annotations

import json
import math
from json.encoder import encode_basestring, encode_basestring_ascii
from dataclasses import dataclass
from typing import Any

from .cursor import resume_problem

# Error codes (the public ones are in DESIGN.md).
BAD_REQUEST = "bad_request"
UNKNOWN_OP = "unknown_op"
UNAUTHORIZED = "unauthorized"
FORBIDDEN = "forbidden"
TOO_LARGE = "too_large"
RATE_LIMITED = "rate_limited"
TOO_MANY_GROUPS = "too_many_groups"
NOT_FOUND = "not_found"
UNAVAILABLE = "unavailable"

# WebSocket close codes.
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_RESTART = 1012
CLOSE_TRY_AGAIN = 1013
CLOSE_KICKED = 4000

MAX_NAME = 200
ADDRESS_KINDS = ("session", "user", "group", "tag")


class ProtocolError(Exception):
    """A request that cannot be served; becomes an error frame or HTTP error."""

    ref: Any = None  # the request's ref, set when it could be read

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Address:
    """Who a message is for: the union of the names of each kind (and maybe all)."""
    session: tuple[str, ...] = ()
    user: tuple[str, ...] = ()
    group: tuple[str, ...] = ()
    tag: tuple[str, ...] = ()
    all: bool = False

    @classmethod
    def from_json(cls, value: dict[str, Any]) -> "Address":
        """An address from its ``to_json`` form, not checked again: it was
        checked where it entered (``parse_address``)."""
        return cls(**{kind: names if kind == "all" else
                      tuple(names) if isinstance(names, list) else (names,)
                      for kind, names in value.items()})

    def to_text(self) -> bytes:
        """``to_json``, encoded (an address of one name without building a dict)."""
        if not self.all:
            names = [(kind, getattr(self, kind)) for kind in ADDRESS_KINDS if getattr(self, kind)]
            if len(names) == 1 and len(names[0][1]) == 1:
                kind, (name,) = names[0]
                return b'{"%s":%s}' % (kind.encode("ascii"), encode(name))
        return encode(self.to_json())

    def to_json(self) -> dict[str, Any]:
        """The address as it goes on the wire: single names unwrapped."""
        out: dict[str, Any] = {}
        for kind in ADDRESS_KINDS:
            names = getattr(self, kind)
            if names:
                out[kind] = names[0] if len(names) == 1 else list(names)
        if self.all:
            out["all"] = True
        return out


@dataclass(frozen=True, slots=True)
class Request:
    """One parsed client frame."""
    op: str
    ref: Any = None
    user: str | None = None
    token: str | None = None
    group: str | None = None
    to: Address | None = None
    data: Any = None
    since: int | tuple[int, ...] | None = None  # one position per shard (cursor.py)
    epoch: str | None = None


def valid_unicode(text: str) -> bool:
    """False when ``text`` holds a lone surrogate (a JSON escape such as
    ``"\\ud800"`` decodes to one), which has no UTF-8 form."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def name(value: Any, what: str) -> str:
    """Check a user, group, tag or session name: a non-empty string of valid
    Unicode, not too long."""
    if not isinstance(value, str) or not value:
        raise ProtocolError(BAD_REQUEST, f"'{what}' must be a non-empty string")
    if len(value) > MAX_NAME:
        raise ProtocolError(BAD_REQUEST, f"'{what}' is longer than {MAX_NAME} characters")
    if not valid_unicode(value):
        raise ProtocolError(BAD_REQUEST, f"'{what}' must be valid Unicode "
                                         f"(it holds a lone surrogate)")
    return value


def parse_address(value: Any, max_targets: int) -> Address:
    """Check an address object (``to``) and return it normalised."""
    if not isinstance(value, dict) or not value:
        raise ProtocolError(BAD_REQUEST, "'to' must be a non-empty object")
    unknown = set(value) - set(ADDRESS_KINDS) - {"all"}
    if unknown:
        raise ProtocolError(BAD_REQUEST, f"'to' has unknown key '{sorted(unknown)[0]}'")
    kinds: dict[str, Any] = {}
    count = 0
    for kind in ADDRESS_KINDS:
        if kind not in value:
            continue
        names = value[kind]
        if isinstance(names, list):
            if not names:
                raise ProtocolError(BAD_REQUEST, f"'to.{kind}' is an empty list")
            names = tuple(dict.fromkeys(name(n, f"to.{kind}") for n in names))
        else:
            names = (name(names, f"to.{kind}"),)
        count += len(names)
        kinds[kind] = names
    if count > max_targets:
        raise ProtocolError(TOO_LARGE, f"'to' names {count} targets; the limit is {max_targets}")
    if "all" in value:
        if value["all"] is not True:
            raise ProtocolError(BAD_REQUEST, "'to.all' must be true")
        kinds["all"] = True
    return Address(**kinds)


def _no_constants(token: str) -> Any:
    raise ValueError(f"{token} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 would go out as Infinity
        raise ValueError(f"{text} is out of range")
    return value


def parse_push(body: Any, max_targets: int, where: str = "the body") -> tuple[Address, Any]:
    """Check one message ``{"to": ADDRESS, "data": ANY}`` (a client's ``send``,
    an HTTP push): its (address, data).  ``where`` names it in errors."""
    if not isinstance(body, dict):
        raise ProtocolError(BAD_REQUEST, f"{where} must be a JSON object")
    if "data" not in body:
        raise ProtocolError(BAD_REQUEST, f"{where} needs 'data'")
    return parse_address(body.get("to"), max_targets), body["data"]


def parse_store(body: dict[str, Any], where: str = "the body") -> bool:
    """A push's ``store`` flag: keep it for addressed users who are offline."""
    store = body.get("store", False)
    if not isinstance(store, bool):
        raise ProtocolError(BAD_REQUEST, f"'store' in {where} must be true or false")
    return store


def parse_event(body: dict[str, Any], where: str = "the body") -> str | None:
    """A push's ``event``: the event name Pusher clients get it as
    (docs/pusher.md), or None."""
    event = body.get("event")
    if event is None:
        return None
    if not isinstance(event, str) or not event or len(event) > MAX_NAME:
        raise ProtocolError(BAD_REQUEST, f"'event' in {where} must be a non-empty string "
                                         f"of at most {MAX_NAME} characters")
    if event.startswith(("pusher:", "pusher_internal:")):
        raise ProtocolError(BAD_REQUEST, f"'event' in {where} must not start with "
                                         "pusher: or pusher_internal: (Pusher's own events)")
    return event


# One decoder for every request: json.loads with these options would make a
# decoder (and its scanner) per call, half the cost of decoding a push.
_DECODER = json.JSONDecoder(parse_constant=_no_constants, parse_float=_finite_float)


def decode_json(text: str | bytes) -> Any:
    """``json.loads`` with every way it can fail turned into ProtocolError.

    NaN and Infinity (also as an overflowing number such as 1e400) are refused:
    they are not JSON and browsers reject them.
    """
    try:
        if isinstance(text, str):
            if text.startswith("\ufeff"):  # as json.loads
                raise ValueError("a byte order mark")
        else:  # as json.loads: UTF-8, -16 or -32, told by the first bytes
            text = text.decode(json.detect_encoding(text), "surrogatepass")
        return _DECODER.decode(text)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise ProtocolError(BAD_REQUEST, "JSON nested too deep"
                            if isinstance(e, RecursionError) else "not valid JSON")


def _ref(frame: dict[str, Any]) -> Any:
    ref = frame.get("ref")
    if isinstance(ref, (dict, list)):
        raise ProtocolError(BAD_REQUEST, "'ref' must be a string, number, boolean or null")
    return ref


def parse_request(text: str | bytes, max_targets: int = 100) -> Request:
    """Parse one client text frame.

    Raises ProtocolError; its ``ref`` attribute holds the frame's ref when one
    could be read, so the error can echo it.
    """
    frame = decode_json(text)
    if not isinstance(frame, dict):
        raise ProtocolError(BAD_REQUEST, "a frame must be a JSON object")
    ref = None
    try:
        ref = _ref(frame)
        op = frame.get("op")
        if not isinstance(op, str):
            raise ProtocolError(BAD_REQUEST, "'op' must be a string")
        if op == "ping":
            return Request(op, ref)
        if op == "join":
            token = frame.get("token")
            if token is not None and (not isinstance(token, str) or not token):
                raise ProtocolError(BAD_REQUEST, "'token' must be a non-empty string")
            return Request(op, ref, group=name(frame.get("group"), "group"), token=token,
                           data=frame.get("data"))
        if op in ("leave", "presence"):
            return Request(op, ref, group=name(frame.get("group"), "group"))
        if op == "auth":
            if "token" in frame:
                if not isinstance(frame["token"], str) or not frame["token"]:
                    raise ProtocolError(BAD_REQUEST, "'token' must be a non-empty string")
                return Request(op, ref, token=frame["token"])
            return Request(op, ref, user=name(frame.get("user"), "user"))
        if op == "send":
            to, data = parse_push(frame, max_targets, "'send'")
            return Request(op, ref, to=to, data=data)
        if op == "resume":
            since, epoch = frame.get("since"), frame.get("epoch")
            problem = resume_problem(since, epoch, MAX_NAME)
            if problem:
                raise ProtocolError(BAD_REQUEST, problem)
            return Request(op, ref, since=tuple(since) if isinstance(since, list) else since,
                           epoch=epoch)
        raise ProtocolError(UNKNOWN_OP, f"unknown op '{op[:MAX_NAME]}'")
    except ProtocolError as e:
        e.ref = ref
        raise


# A frame that is not served (over the rate) is parsed for its ref only up to
# this size.
REF_PARSE_LIMIT = 4096


def ref_of(payload: bytes) -> Any:
    """The ``ref`` of a small frame that parses, else None (for the error
    answering a frame that is not served)."""
    if len(payload) > REF_PARSE_LIMIT:
        return None
    try:
        frame = decode_json(payload)
    except ProtocolError:
        return None
    ref = frame.get("ref") if isinstance(frame, dict) else None
    return None if isinstance(ref, (dict, list)) else ref


def encode(frame: Any) -> bytes:
    """One server frame (or any JSON value) as compact UTF-8 JSON.

    Strings with a lone surrogate (from an escape such as ``"\\ud800"`` in
    what a client or backend sent) have no UTF-8 form; then the whole value is
    encoded as ASCII, with every non-ASCII character escaped, which is the same
    JSON.
    """
    if isinstance(frame, str):  # the commonest value, without an encoder object
        try:
            return encode_basestring(frame).encode("utf-8")
        except UnicodeEncodeError:
            return encode_basestring_ascii(frame).encode("ascii")
    text = json.dumps(frame, separators=(",", ":"), ensure_ascii=False)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(frame, separators=(",", ":")).encode("ascii")
