"""What each setting's value may be: the checks ``specs.SPECS`` runs on a
value from the TOML file or the command line.  Each returns the value as the
settings hold it, or raises ValueError saying what is wrong.  No I/O but the
host name (a node's default name)."""

from __future__ import annotations

import math
import re
import socket
from typing import Any, Callable

from .limits import check_origin, parse_networks

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
INTERFACE_RE = re.compile(r"(?:^|:)interface=((?:\\:|[^:])*)")  # every one: the last wins
LOOPBACK_RE = re.compile(r"127\.\d+\.\d+\.\d+|\\:\\:1|localhost")

# The admin console's socket: in the run directory, for this user only; the
# lock file makes a second server refuse to start on a live one.
DEFAULT_ADMIN = "unix:pushsvc-admin.sock:mode=600:lockfile=1"


def integer(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            top = f" and at most {high}" if high is not None else ""
            raise ValueError(f"must be at least {low}{top}, got {value}")
        return value
    return check


def seconds(low: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or value < low:
            raise ValueError(f"must be at least {low} seconds and finite, got {value}")
        return float(value)
    return check


def choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value
    return check


def whole(text: str) -> int | str:
    """A flag's text as a whole number when it is one (else as it is, for
    the check to refuse): the command line has only text, a TOML file types."""
    return int(text) if re.fullmatch(r"\s*-?\d+\s*", text) else text


def workers(value: Any) -> int | None:
    """``"auto"`` (one per CPU, stored as None) or a whole number >= 0."""
    if value == "auto":
        return None
    return integer(0, 256)(value)


def endpoints(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of Twisted endpoint strings")
    return list(value)


def strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return list(value)


def per_second(value: Any) -> float:
    """A rate: a finite number >= 0 (0 = no limit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number per second, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be at least 0 and finite, got {value}")
    return float(value)


def origins(value: Any) -> list[str]:
    """Browser origins (``https://app.example.com``, ``https://*.example.com``, ``null``)."""
    if not isinstance(value, list):
        raise ValueError("must be a list of origins such as \"https://app.example.com\"")
    return [check_origin(text(v)) for v in value]


def networks(value: Any) -> list[str]:
    """IP addresses and CIDR networks (``10.0.0.1``, ``10.0.0.0/8``)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of IP addresses or networks")
    parse_networks(value)
    return [v.strip() for v in value]


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def jwt_secret(value: Any) -> str:
    from .tokens import check_secret
    return check_secret(value)


def jwt_algorithms(value: Any) -> list[str]:
    from .tokens import check_algorithms
    return check_algorithms(value)


def redis_url(value: Any) -> str:
    """'' (no Redis) or redis:// or redis+sentinel:// URLs (``broker.redis_url``),
    several separated by spaces: one per shard (``broker.redis_shards``); or
    one redis+cluster:// URL (``broker.redis_cluster``)."""
    from .broker.redis_url import parse_redis_url
    urls = text(value).split()
    if any(parse_redis_url(url).cluster for url in urls) and len(urls) > 1:
        raise ValueError("a redis+cluster:// URL names a whole cluster: give it alone")
    if len(set(urls)) != len(urls):
        raise ValueError("names a Redis twice")
    return " ".join(urls)


def redis_urls(value: Any) -> str:
    """A list of Redis URLs, one per shard, as ``redis_url`` gives them."""
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of Redis URLs")
    if any(len(v.split()) != 1 for v in value):
        raise ValueError("must hold one URL per string")
    return redis_url(" ".join(value))


REDIS_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def redis_prefix(value: Any) -> str:
    if not isinstance(value, str) or not REDIS_PREFIX_RE.match(value):
        raise ValueError("must be 1-64 letters, digits, '_', '.', ':' or '-', "
                         f"got {value!r}")
    return value


def backend_url(value: Any) -> str:
    """'' (none) or an http:// or https:// URL with a host (``proxy.*_url``)."""
    from urllib.parse import urlsplit
    value = text(value).strip()
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


def separator(value: Any) -> str:
    from .namespaces import check_separator
    return check_separator(value)


def app_module(value: Any) -> str:
    value = text(value)
    if value and not (value.endswith(".py") or MODULE_RE.match(value)):
        raise ValueError(f"must be a dotted module name or a .py file, got {value!r}")
    return value


def admin_endpoint(value: Any) -> str:
    """An endpoint string, or '' for no admin console; TCP only on loopback."""
    value = text(value)
    kind = value.split(":", 1)[0]
    if value and kind not in ("unix", "tcp", "tcp6"):
        raise ValueError(f"must be a unix: or tcp: endpoint, got {value!r}")
    if kind in ("tcp", "tcp6") and not on_loopback(value):
        raise ValueError("a tcp: admin endpoint must set interface=127.0.0.1 "
                         "(or ::1): the console is for this machine only")
    return value


def node_name(value: Any) -> str:
    if value == "":
        return default_node_name()
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise ValueError("must be 1-32 letters, digits, '_' or '-'")
    return value


def on_loopback(description: str) -> bool:
    """Whether an endpoint string listens on loopback only: it sets
    ``interface=`` (Twisted takes the last one given) and each is loopback."""
    interfaces = INTERFACE_RE.findall(description)
    return bool(interfaces) and all(LOOPBACK_RE.fullmatch(i) for i in interfaces)


def exposed_endpoints(endpoints: list[str]) -> list[str]:
    """The listening endpoints that other machines may reach: a tcp:, tcp6:
    or ssl: endpoint without interface= on loopback (none means every
    interface), or a kind not known here; unix: sockets are local."""
    exposed = []
    for description in endpoints:
        kind = description.split(":", 1)[0]
        if kind == "unix" or (kind in ("tcp", "tcp6", "ssl") and on_loopback(description)):
            continue
        exposed.append(description)
    return exposed


def default_node_name() -> str:
    """The host name, cut to the characters a session id may hold."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname().split(".")[0])
    return name[:32] or "node"
