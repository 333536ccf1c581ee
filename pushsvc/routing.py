"""Routing decisions: address -> channels, address -> local sessions.

No I/O.  A message is published once on the set of channels its address
covers; every process that subscribes to one of them gets it once and picks its
own recipients with ``recipients``, which returns each session at most once
however many parts of the address it matches.

A session is reached through its owner's channel (``worker:NODE.WORKER``, read
from the session id) rather than a channel per session, so connecting a
session never costs a subscription.
"""

from __future__ import annotations

from .ids import owner
from .protocol import Address
from .sessions import ALL, Session, SessionRegistry


def worker_channel(owner_name: str) -> str:
    """The channel every process subscribes to for its own sessions."""
    return f"worker:{owner_name}"


def channels(address: Address) -> set[str]:
    """Every channel a message to ``address`` must be published on."""
    if address.all:
        return {ALL}
    out = {f"user:{u}" for u in address.user}
    out.update(f"group:{g}" for g in address.group)
    out.update(f"tag:{t}" for t in address.tag)
    for session_id in address.session:
        holder = owner(session_id)
        if holder is not None:
            out.add(worker_channel(holder))
    return out


def session_channels(session: Session) -> list[str]:
    """The channels that carry messages to ``session`` (besides its worker's)."""
    out = [ALL]
    if session.user is not None:
        out.append(f"user:{session.user}")
    out.extend(f"group:{g}" for g in session.groups)
    out.extend(f"tag:{t}" for t in session.tags)
    return out


def recipients(registry: SessionRegistry, address: Address) -> set[Session] | list[Session]:
    """The local sessions a message to ``address`` goes to, each once."""
    if address.all:
        return list(registry.everyone())
    found: set[Session] = set()
    for user in address.user:
        found.update(registry.user_sessions(user))
    for group in address.group:
        found.update(registry.group_members(group))
    for tag in address.tag:
        found.update(registry.tagged(tag))
    for session_id in address.session:
        session = registry.get(session_id)
        if session is not None:
            found.add(session)
    return found
