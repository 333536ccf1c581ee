"""The values every layer passes around: a message on its way and a
server-side command."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..protocol import Address


@dataclass(frozen=True, slots=True)
class Message:
    """A message on its way: its id, its address and its encoded ``msg`` frame.

    ``frame`` is encoded once where the message enters the system and is
    written as is to every recipient.
    """
    id: str
    to: Address
    frame: bytes
    to_text: bytes = b""  # ``to`` as JSON, when the engine has encoded it


@dataclass(frozen=True, slots=True)
class Command:
    """A server-side operation every engine runs on its own sessions.

    ``name`` is one of ``commands.COMMANDS``; ``args`` are JSON values.
    """
    name: str
    args: dict[str, Any]
