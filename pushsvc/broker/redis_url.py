"""The ``--redis`` URL: where Redis is and how to log in.  No I/O, no txredisapi
(the settings check it before the reactor is chosen).

    redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]
    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]
    redis+cluster://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]

``HOST`` may be a name, an IPv4 address or an IPv6 address in brackets;
``PORT`` defaults to 6379 (26379 for a Sentinel); ``DB`` to 0.  With
``redis+sentinel://`` the hosts are Sentinels, asked for the master of
``SERVICE`` before each connection; the user and password are the master's
(the Sentinels are asked without).  With ``redis+cluster://`` the hosts are
some nodes of a Redis Cluster, asked for the others (``redis_cluster``); a
cluster has one database, 0.  User and password may be %-escaped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

SCHEMES = {"redis": 6379, "redis+sentinel": 26379, "redis+cluster": 6379}
MAX_DB = 2 ** 31 - 1
_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(\d{1,5}))?$")
_SERVICE_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
EXAMPLE = ("redis://127.0.0.1:6379/0, redis+sentinel://10.0.0.1:26379,10.0.0.2/mymaster/0 "
           "or redis+cluster://10.0.0.1:6379,10.0.0.2:6379")


@dataclass(frozen=True)
class RedisURL:
    """A parsed ``--redis`` URL."""
    hosts: tuple[tuple[str, int], ...]   # the server, the Sentinels or cluster nodes
    db: int = 0
    service: str | None = None           # the Sentinel service; None: no Sentinel
    username: str | None = None
    password: str | None = None
    cluster: bool = False                # the hosts are nodes of a Redis Cluster

    @property
    def sentinel(self) -> bool:
        return self.service is not None

    def describe(self) -> str:
        """The URL without the password (for logs)."""
        user = ""
        if self.username is not None or self.password is not None:
            user = quote(self.username or "", safe="") + (":***" if self.password else "") + "@"
        hosts = ",".join(f"[{h}]:{p}" if ":" in h else f"{h}:{p}" for h, p in self.hosts)
        if self.sentinel:
            return f"redis+sentinel://{user}{hosts}/{self.service}/{self.db}"
        if self.cluster:
            return f"redis+cluster://{user}{hosts}"
        return f"redis://{user}{hosts}/{self.db}"


def parse_redis_url(text) -> RedisURL:
    """Parse ``text``; ValueError saying what is wrong."""
    if not isinstance(text, str) or not text:
        raise ValueError(f"must be a Redis URL such as {EXAMPLE}, got {text!r}")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in SCHEMES:
        raise ValueError(f"must start with redis://, redis+sentinel:// or redis+cluster:// "
                         f"(e.g. {EXAMPLE}), got {text!r}")
    if "?" in rest or "#" in rest:
        raise ValueError("options after '?' or '#' are not supported")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    names = hostlist.split(",")
    if scheme == "redis" and len(names) != 1:
        raise ValueError("redis:// takes one host; list Sentinels with redis+sentinel:// "
                         "or cluster nodes with redis+cluster://")
    hosts = tuple(_host(name, SCHEMES[scheme]) for name in names)
    parts = path.split("/") if path else []
    if scheme == "redis+sentinel":
        if not parts or not _SERVICE_RE.match(parts[0]):
            raise ValueError("redis+sentinel:// needs the service name after the hosts "
                             "(e.g. redis+sentinel://10.0.0.1:26379/mymaster/0)")
        service, parts = parts[0], parts[1:]
    else:
        service = None
    if scheme == "redis+cluster" and parts and parts != ["0"]:
        raise ValueError(f"a Redis Cluster has one database (0): give no path, got {path!r}")
    if len(parts) > 1 or (parts and parts[0] == ""):
        raise ValueError(f"unexpected path {path!r}: give at most a database number")
    db = 0
    if parts:
        if not parts[0].isdigit() or int(parts[0]) > MAX_DB:
            raise ValueError(f"the database must be a whole number >= 0, got {parts[0]!r}")
        db = int(parts[0])
    return RedisURL(hosts, db, service, username, password, scheme == "redis+cluster")


def _host(text: str, default_port: int) -> tuple[str, int]:
    match = _HOST_RE.match(text)
    if not match:
        raise ValueError(f"bad host {text!r}: give HOST or HOST:PORT "
                         "(an IPv6 address in brackets)")
    host, port = match.group(1), match.group(2)
    port = default_port if port is None else int(port)
    if not 0 < port < 65536:
        raise ValueError(f"bad port {port} in {text!r}: must be 1-65535")
    return host.strip("[]"), port
