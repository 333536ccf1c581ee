"""A chat room for pushsvc: ``twistd -n pushsvc --app examples/chat.py``.

Every user who authenticates joins the group ``lobby``.  What a client sends
to the lobby is checked: text only, rude words become ``***``, and a line
starting with ``/`` is a command (``/who`` answers the sender alone with who is
in the lobby).  When someone leaves, the lobby is told.

    {"op":"auth","user":"alice"}
    {"op":"send","to":{"group":"lobby"},"data":"hello"}
    {"op":"send","to":{"group":"lobby"},"data":"/who"}  -> {"who":["alice","bob"]}
"""

import re

from pushsvc.app import Answer, Deliver, Refused

LOBBY = "lobby"
RUDE = re.compile(r"\b(darn|heck|frak)\b", re.IGNORECASE)


async def on_auth(session, api, user, token):
    """Accept the user (the server's own rules apply) and seat them in the lobby."""
    await api.join(LOBBY, session=session)


async def on_message(session, api, to, data):
    """Filter what is said in the lobby; answer commands."""
    if to != {"group": LOBBY}:
        return None  # not the room's business: the server's policy decides
    if not isinstance(data, str):
        raise Refused("say it with text")
    if data == "/who":
        members = await api.members(LOBBY)
        return Answer({"who": sorted({m["user"] for m in members if m["user"]})})
    if data.startswith("/"):
        raise Refused(f"unknown command {data.split()[0]}")
    clean = RUDE.sub("***", data)
    return None if clean == data else Deliver(clean)


def on_disconnect(session, api):
    """Tell the room who left."""
    if LOBBY in session.groups and session.user is not None:
        return api.push({"group": LOBBY}, {"left": session.user})
    return None
