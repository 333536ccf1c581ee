"""Application hooks: user code the engine calls at a session's events.

``--app MODULE`` (``[server] app``) names a module, dotted or a ``.py`` path,
with any of these functions (docs/app.md tells the whole story)::

    on_connect(session, api)                 a client connected
    on_auth(session, api, user, token)       it asks to be a user: may refuse or pick the user
    on_message(session, api, to, data)       it sends: may deliver, change, refuse or answer
    on_join(session, api, group, data)       it joins a group of a namespace with join = "hook"
    on_disconnect(session, api)              it has gone

``session`` is a ``SessionInfo`` snapshot and ``api`` an ``API``.  A hook may
return a Deferred or be a coroutine.  ``load_app`` loads fresh code at every
call, so a reload picks up an edited module; ``Engine.set_app`` swaps the hooks
while clients stay connected.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import sys
import traceback
from dataclasses import dataclass
from typing import Any, Callable

from twisted.internet.defer import Deferred

from .commands import make_command
from .protocol import parse_address

HOOKS = ("on_connect", "on_auth", "on_message", "on_join", "on_disconnect")

# sys.modules name of a module loaded from a path: the file's stem after this.
PATH_MODULE_PREFIX = "pushsvc_app_"


class AppError(Exception):
    """The application module cannot be used; ``str()`` is one readable line."""


class Refused(Exception):
    """Raised by a hook to refuse the request with ``message``: ``unauthorized``
    in ``on_auth`` (the connection then closes), ``forbidden`` elsewhere."""

    def __init__(self, message: str = "refused by the application"):
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class Deliver:
    """``on_message``'s answer: deliver ``data`` instead, to ``to`` (an address
    object like a client's ``to``) or, when it is None, where the client sent it."""
    data: Any
    to: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Allow:
    """``on_join``'s answer: let the session join, with ``data`` attached to
    it as a member (shown in ``presence`` answers and ``joined`` events)."""
    data: Any = None


_NOTHING = object()


@dataclass(frozen=True, slots=True)
class Answer:
    """``on_message``'s answer: deliver nothing and write ``data`` to the sender
    alone (a ``msg`` frame); ``Answer()`` writes nothing."""
    data: Any = _NOTHING

    @property
    def silent(self) -> bool:
        return self.data is _NOTHING


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A session as hooks see it: a read-only snapshot taken at the event."""
    id: str
    user: str | None
    groups: frozenset[str]
    tags: frozenset[str]

    @classmethod
    def of(cls, session) -> SessionInfo:
        return cls(session.id, session.user, frozenset(session.groups),
                   frozenset(session.tags))


class API:
    """What hooks may do, for any session of the server: pushes and commands go
    through the broker, so they work across workers and nodes."""

    def __init__(self, engine):
        self._engine = engine

    def push(self, to: dict[str, Any], data: Any) -> Deferred:
        """Publish ``data`` to the address ``to`` (as ``POST /api/push`` does);
        a Deferred firing with the message id."""
        return self._engine.publish(parse_address(to, self._engine.settings.max_targets),
                                    data)

    def reply(self, session: SessionInfo | str, data: Any) -> str | None:
        """Write ``data`` as a ``msg`` frame to ``session`` alone, in order with
        the replies to its requests; the message id, or None if it has gone.

        For a session of this process: one handed to a hook.
        """
        found = self._engine.registry.get(_session_id(session))
        return None if found is None else self._engine.answer(found, data)

    def command(self, name: str, **body: Any) -> Deferred:
        """Run a server command (as the HTTP API's ``/api/NAME``) on every
        worker; a Deferred firing with the merged result."""
        if "session" in body:
            body["session"] = _session_id(body["session"])
        return self._engine.run(make_command(name, body))

    def join(self, group: str, *, session: SessionInfo | str | None = None,
             user: str | None = None) -> Deferred:
        """Join ``session`` (or every session of ``user``) to ``group``; it is
        told with a ``joined`` frame.  Fires with ``{"sessions": N, ...}``."""
        return self.command("join", group=group, **_target(session, user))

    def leave(self, group: str, *, session: SessionInfo | str | None = None,
              user: str | None = None) -> Deferred:
        """Take ``session`` (or every session of ``user``) out of ``group``."""
        return self.command("leave", group=group, **_target(session, user))

    def tag(self, tag: str, *, session: SessionInfo | str | None = None,
            user: str | None = None) -> Deferred:
        """Tag ``session`` (or every session of ``user``) with ``tag``."""
        return self.command("tag", tag=tag, **_target(session, user))

    def untag(self, tag: str, *, session: SessionInfo | str | None = None,
              user: str | None = None) -> Deferred:
        """Remove ``tag`` from ``session`` (or every session of ``user``)."""
        return self.command("untag", tag=tag, **_target(session, user))

    def kick(self, *, session: SessionInfo | str | None = None, user: str | None = None,
             reason: str | None = None) -> Deferred:
        """Close ``session`` (or every session of ``user``) with code 4000."""
        extra = {} if reason is None else {"reason": reason}
        return self.command("kick", **_target(session, user), **extra)

    def members(self, group: str) -> Deferred:
        """The members of ``group`` on every worker: a Deferred firing with a
        list of ``{"session": ..., "user": ...}``."""
        return self.command("group", group=group).addCallback(lambda r: r["members"])


def _session_id(session: SessionInfo | str) -> str:
    return session.id if isinstance(session, SessionInfo) else session


def _target(session: SessionInfo | str | None, user: str | None) -> dict[str, str]:
    target = {} if session is None else {"session": session}
    if user is not None:
        target["user"] = user
    return target


class App:
    """A loaded application module and its hooks (None for each it lacks)."""

    __slots__ = ("spec", "module", *HOOKS)

    def __init__(self, spec: str, module: Any):
        self.spec = spec
        self.module = module
        for hook in HOOKS:
            value: Callable[..., Any] | None = getattr(module, hook, None)
            if value is not None and not callable(value):
                raise AppError(f"{spec}: {hook} is not callable")
            setattr(self, hook, value)

    def __repr__(self) -> str:
        return f"<App {self.spec}>"


class _FreshLoader(importlib.machinery.SourceFileLoader):
    """Compiles the source at every load: bytecode caches are keyed on the
    source's mtime (whole seconds) and size, and may miss a quick edit."""

    def get_code(self, fullname):
        path = self.get_filename(fullname)
        return self.source_to_code(self.get_data(path), path)


def load_app(spec: str) -> App | None:
    """Load the application module ``spec`` anew (a dotted name, or a path
    ending in ``.py``); None for "".  Raises AppError, one line, when it
    cannot be imported or its hooks are not callable.

    The current directory is made importable first (workers run from the run
    directory).  Only the module itself is loaded anew, not what it imports.
    """
    if not spec:
        return None
    try:
        module = _load_path(spec) if spec.endswith(".py") else _load_name(spec)
    except (Exception, SystemExit) as e:
        raise AppError(_describe(spec, e)) from None
    return App(spec, module)


def _load_path(spec: str) -> Any:
    path = os.path.abspath(spec)
    stem = os.path.splitext(os.path.basename(path))[0]
    return _execute(PATH_MODULE_PREFIX + stem, path)


def _load_name(name: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    importlib.invalidate_caches()  # see files created since the last import
    previous = sys.modules.pop(name, None)  # or find_spec answers with its old spec
    try:
        found = importlib.util.find_spec(name)
        if found is None:
            raise ModuleNotFoundError(f"No module named {name!r}")
        if not (found.origin or "").endswith(".py"):
            raise ImportError(f"not a Python source file ({found.origin})")
        return _execute(name, found.origin)
    except BaseException:
        if previous is not None:
            sys.modules[name] = previous
        raise


def _execute(name: str, path: str) -> Any:
    """A new module ``name`` from the source at ``path``, registered in sys.modules."""
    loader = _FreshLoader(name, path)
    module = importlib.util.module_from_spec(
        importlib.util.spec_from_file_location(name, path, loader=loader))
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    except BaseException:
        if previous is None:
            del sys.modules[name]
        else:
            sys.modules[name] = previous
        raise
    return module


def _shown(path: str) -> str:
    """``path`` relative to the current directory when it is inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith(os.pardir) else relative


def _describe(spec: str, error: BaseException) -> str:
    """One line: where (file and line when known) and what went wrong."""
    if isinstance(error, SyntaxError) and error.filename:
        return (f"{_shown(error.filename)}, line {error.lineno}: "
                f"{type(error).__name__}: {error.msg}")
    where = spec
    # The innermost module-level code outside importlib: the statement of
    # the app (or of a module it imports) that failed.
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if frame.name == "<module>" and not frame.filename.startswith("<"):
            where = f"{_shown(frame.filename)}, line {frame.lineno}"
            break
    text = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    lines = text.strip().splitlines()
    what = type(error).__name__
    return f"{where}: {what}: {lines[0]}" if lines else f"{where}: {what}"
