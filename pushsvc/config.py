"""Settings: the TOML file and the command line folded into one validated object.

Every setting is declared once in ``SPECS``: its TOML section and key, its
default, how to check it, and (for some) its command-line flag.  The
command-line options in ``tap.py`` are generated from the same table, so a
setting can never exist in one place and not the other.  The command line wins
over the file, which wins over the default.
"""

from __future__ import annotations

import math
import os
import re
import socket
import tomllib
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from .limits import check_origin, parse_networks


class ConfigError(Exception):
    """A setting is wrong.  ``str()`` names the setting and what is wrong."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


# Twisted's default listen backlog (50) turns a reconnect storm into 1 s SYN
# retries; the kernel caps this at net.core.somaxconn.
DEFAULT_BACKLOG = 1024

NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
INTERFACE_RE = re.compile(r"(?:^|:)interface=((?:\\:|[^:])*)")  # every one: the last wins
LOOPBACK_RE = re.compile(r"127\.\d+\.\d+\.\d+|\\:\\:1|localhost")

# The admin console's socket: in the run directory, for this user only; the
# lock file makes a second server refuse to start on a live one.
DEFAULT_ADMIN = "unix:pushsvc-admin.sock:mode=600:lockfile=1"


def _int(low: int, high: int | None = None) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"must be a whole number, got {value!r}")
        if value < low or (high is not None and value > high):
            top = f" and at most {high}" if high is not None else ""
            raise ValueError(f"must be at least {low}{top}, got {value}")
        return value
    return check


def _seconds(low: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"must be a number of seconds, got {value!r}")
        if not math.isfinite(value) or value < low:
            raise ValueError(f"must be at least {low} seconds and finite, got {value}")
        return float(value)
    return check


def _choice(*choices: str) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}; got {value!r}")
        return value
    return check


def _whole(text: str) -> int | str:
    """A flag's text as a whole number when it is one (else as it is, for
    the check to refuse): the command line has only text, a TOML file types."""
    return int(text) if re.fullmatch(r"\s*-?\d+\s*", text) else text


def _workers(value: Any) -> int | None:
    """``"auto"`` (one per CPU, stored as None) or a whole number >= 0."""
    if value == "auto":
        return None
    return _int(0, 256)(value)


def _endpoints(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of Twisted endpoint strings")
    return list(value)


def _strings(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError("must be a list of non-empty strings")
    return list(value)


def _per_second(value: Any) -> float:
    """A rate: a finite number >= 0 (0 = no limit)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"must be a number per second, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"must be at least 0 and finite, got {value}")
    return float(value)


def _origins(value: Any) -> list[str]:
    """Browser origins (``https://app.example.com``, ``https://*.example.com``, ``null``)."""
    if not isinstance(value, list):
        raise ValueError("must be a list of origins such as \"https://app.example.com\"")
    return [check_origin(_text(v)) for v in value]


def _networks(value: Any) -> list[str]:
    """IP addresses and CIDR networks (``10.0.0.1``, ``10.0.0.0/8``)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a list of IP addresses or networks")
    parse_networks(value)
    return [v.strip() for v in value]


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"must be a string, got {value!r}")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false, got {value!r}")
    return value


def _jwt_secret(value: Any) -> str:
    from .tokens import check_secret
    return check_secret(value)


def _jwt_algorithms(value: Any) -> list[str]:
    from .tokens import check_algorithms
    return check_algorithms(value)


def _redis_url(value: Any) -> str:
    """'' (no Redis) or a redis:// or redis+sentinel:// URL (``broker.redis_url``)."""
    from .broker.redis_url import parse_redis_url
    value = _text(value).strip()
    if value:
        parse_redis_url(value)
    return value


REDIS_PREFIX_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def _redis_prefix(value: Any) -> str:
    if not isinstance(value, str) or not REDIS_PREFIX_RE.match(value):
        raise ValueError("must be 1-64 letters, digits, '_', '.', ':' or '-', "
                         f"got {value!r}")
    return value


def _backend_url(value: Any) -> str:
    """'' (none) or an http:// or https:// URL with a host (``proxy.*_url``)."""
    from urllib.parse import urlsplit
    value = _text(value).strip()
    if value:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"must be an http:// or https:// URL, got {value!r}")
    return value


def _separator(value: Any) -> str:
    from .namespaces import check_separator
    return check_separator(value)


def _app(value: Any) -> str:
    value = _text(value)
    if value and not (value.endswith(".py") or MODULE_RE.match(value)):
        raise ValueError(f"must be a dotted module name or a .py file, got {value!r}")
    return value


def _admin_endpoint(value: Any) -> str:
    """An endpoint string, or '' for no admin console; TCP only on loopback."""
    value = _text(value)
    kind = value.split(":", 1)[0]
    if value and kind not in ("unix", "tcp", "tcp6"):
        raise ValueError(f"must be a unix: or tcp: endpoint, got {value!r}")
    if kind in ("tcp", "tcp6") and not on_loopback(value):
        raise ValueError("a tcp: admin endpoint must set interface=127.0.0.1 "
                         "(or ::1): the console is for this machine only")
    return value


def _node(value: Any) -> str:
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


@dataclass(frozen=True)
class Spec:
    """One setting: where it lives in TOML, its default, its check, its flag."""
    section: str
    key: str
    default: Any
    check: Callable[[Any], Any]
    help: str
    flag: str | None = None
    attr: str | None = None  # its name in Settings, when not ``key``
    parse: Callable[[str], Any] | None = None  # the flag's text -> a value to check

    @property
    def setting(self) -> str:
        return f"{self.section}.{self.key}"

    @property
    def name(self) -> str:
        """The Settings attribute that holds it."""
        return self.attr or self.key


SPECS: tuple[Spec, ...] = (
    Spec("server", "port", 8080, _int(0, 65535),
         "TCP port for WebSocket (/ws) and the HTTP API", flag="port", parse=_whole),
    Spec("server", "listen", [], _endpoints,
         "Twisted endpoint strings to listen on, instead of the port "
         "(repeatable)", flag="listen"),
    Spec("server", "workers", "auto", _workers,
         "worker processes: 'auto' = one per CPU, 0 = one process", flag="workers",
         parse=_whole),
    Spec("server", "node", "", _node,
         "this machine's name in session ids (default: host name)", flag="node"),
    Spec("server", "app", "", _app,
         "application module with hooks: a dotted module name or a .py file; "
         "'' = none", flag="app"),
    Spec("server", "admin", DEFAULT_ADMIN, _admin_endpoint,
         "endpoint of the admin console (pushsvc-admin); '' = none", flag="admin"),
    Spec("server", "admin_secret", "", _text,
         "secret the admin console must give; required for a tcp: admin endpoint"),
    Spec("log", "format", "text", _choice("text", "json"),
         "log format: 'text' lines, or 'json' (one JSON object per line)",
         flag="log-format", attr="log_format"),
    Spec("limits", "max_message_bytes", 65536, _int(64, 16 * 1024 * 1024),
         "largest WebSocket message or HTTP body accepted, in bytes"),
    Spec("limits", "max_connections", 10000, _int(1),
         "WebSocket sessions this process holds at once"),
    Spec("limits", "max_groups_per_session", 100, _int(1),
         "groups one session may be in"),
    Spec("limits", "max_buffered_bytes", 4 * 1024 * 1024, _int(4096),
         "bytes waiting to be written to one slow client before it is closed "
         "with 1013"),
    Spec("limits", "max_targets", 100, _int(1),
         "names in one address (e.g. a list of groups)"),
    Spec("limits", "max_batch_messages", 1000, _int(1),
         "messages in one POST /api/batch"),
    Spec("limits", "max_worker_backlog", 64 * 1024 * 1024, _int(1024 * 1024),
         "bytes the master may hold for one worker that does not read its pipe; "
         "past it the worker is restarted"),
    Spec("limits", "max_batch_bytes", 1024 * 1024, _int(1024, 256 * 1024 * 1024),
         "largest POST /api/batch body, in bytes"),
    Spec("limits", "max_connections_per_ip", 256, _int(0),
         "connections one client address may hold in this process (per "
         "worker); past it 429; 0 = no limit"),
    Spec("limits", "messages_per_second", 50.0, _per_second,
         "messages (and pings) a session may send per second on average; "
         "past it error rate_limited; 0 = no limit"),
    Spec("limits", "message_burst", 200, _int(1),
         "messages a session may send at once above the rate; this many "
         "refused in a row close it with 1008"),
    Spec("limits", "max_header_bytes", 16384, _int(1024, 1024 * 1024),
         "largest HTTP request line plus headers, in bytes; past it 431"),
    Spec("timeouts", "ping_interval", 25.0, _seconds(0.1),
         "seconds between WebSocket pings to an idle client"),
    Spec("timeouts", "ping_timeout", 60.0, _seconds(0.1),
         "seconds of silence after which a client is dropped"),
    Spec("timeouts", "handshake_timeout", 10.0, _seconds(0.1),
         "seconds a new connection has to finish its HTTP request or "
         "WebSocket handshake"),
    Spec("timeouts", "close_timeout", 3.0, _seconds(0.1),
         "seconds to wait for a client's close handshake (and for all "
         "clients at shutdown)"),
    Spec("timeouts", "restart_drain", 5.0, _seconds(0),
         "seconds over which a worker retired by restart-workers spreads the "
         "closes of its clients; 0 = all at once", attr="restart_drain"),
    Spec("history", "ttl", 60.0, _seconds(0),
         "seconds a message is kept for clients that resume; 0 = no history"),
    Spec("history", "max_per_channel", 100, _int(1),
         "messages kept per channel (user, group, tag, all)"),
    Spec("history", "max_memory", 64 * 1024 * 1024, _int(64 * 1024),
         "bytes of kept messages in all; past it the oldest go first"),
    Spec("redis", "url", "", _redis_url,
         "Redis for many nodes: redis://HOST:PORT/DB or "
         "redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE/DB; '' = none",
         flag="redis", attr="redis"),
    Spec("redis", "prefix", "pushsvc:", _redis_prefix,
         "start of every Redis channel and key this cluster uses",
         attr="redis_prefix"),
    Spec("redis", "timeout", 5.0, _seconds(0.1),
         "seconds a Redis command, connection attempt or cluster-wide command "
         "may take", attr="redis_timeout"),
    Spec("redis", "heartbeat", 2.0, _seconds(0.1),
         "seconds between a process's heartbeats in Redis; one silent for 3 "
         "is taken for gone", attr="redis_heartbeat"),
    Spec("redis", "max_queued_messages", 10000, _int(0),
         "messages kept for other nodes while Redis is away; past it the "
         "oldest are dropped", attr="redis_max_queued"),
    Spec("redis", "max_queued_bytes", 16 * 1024 * 1024, _int(0),
         "bytes of messages kept for other nodes while Redis is away",
         attr="redis_max_queued_bytes"),
    Spec("http", "api_keys", [], _strings,
         "bearer keys for the HTTP API; empty = no key needed"),
    Spec("http", "api_read_keys", [], _strings,
         "bearer keys that may only read (GET) the HTTP API; a POST with one is 403"),
    Spec("http", "allowed_origins", [], _origins,
         "browser origins allowed to open a WebSocket (Origin header); "
         "empty = any (development only)"),
    Spec("http", "trusted_proxies", [], _networks,
         "reverse proxies (IP addresses or networks) whose X-Forwarded-For "
         "names the client; empty = the header is ignored"),
    Spec("policy", "client_send", "joined", _choice("joined", "any", "none"),
         "what a client's send may address: 'joined' groups only, 'any' "
         "address, or 'none'"),
    Spec("policy", "namespace_separator", ":", _separator,
         "what ends a group's namespace: 'team:7' is in namespace 'team'"),
    # The backend that decides joins and sends (pushsvc/proxy.py, docs/security.md).
    Spec("proxy", "join_url", "", _backend_url,
         "URL the workers POST a join to in namespaces with join = 'proxy'; '' = none",
         attr="proxy_join_url"),
    Spec("proxy", "send_url", "", _backend_url,
         "URL the workers POST a client's send to in namespaces with client_send = "
         "'proxy'; '' = none", attr="proxy_send_url"),
    Spec("proxy", "timeout", 2.0, _seconds(0.1),
         "seconds the backend has to answer", attr="proxy_timeout"),
    Spec("proxy", "max_in_flight", 100, _int(1),
         "requests to the backend one worker has under way at once; past it the "
         "request counts as failed", attr="proxy_max_in_flight"),
    Spec("proxy", "on_error", "deny", _choice("deny", "allow"),
         "what a join or send gets when the backend fails (error, timeout, bad "
         "answer)", attr="proxy_on_error"),
    Spec("proxy", "secret", "", _text,
         "sent to the backend as 'Authorization: Bearer SECRET'; '' = no header",
         attr="proxy_secret"),
    # Client tokens (pushsvc/tokens.py, docs/protocol.md#authentication).
    Spec("auth", "mode", "none", _choice("none", "token", "required"),
         "client authentication: 'none' (development: auth with a user name is "
         "trusted), 'token' (auth needs a valid token), 'required' (a valid "
         "token before any op but auth and ping)", attr="auth_mode"),
    Spec("auth", "jwt_secret", "", _jwt_secret,
         "shared secret (at least 32 bytes) for HS256 tokens; '' = none"),
    Spec("auth", "jwt_public_key_file", "", _text,
         "PEM file of the public key(s) for RS256/ES256 tokens; '' = none"),
    Spec("auth", "jwt_algorithms", ["HS256", "RS256", "ES256"], _jwt_algorithms,
         "token algorithms accepted (each one that has a key)"),
    Spec("auth", "jwt_audience", "", _text,
         "when set, a token's 'aud' must name it; '' = tokens must have no 'aud'"),
    Spec("auth", "jwt_issuer", "", _text,
         "when set, a token's 'iss' must be it; '' = not checked"),
    Spec("auth", "require_exp", True, _bool,
         "tokens must carry 'exp' (an expiry)", attr="jwt_require_exp"),
    Spec("auth", "leeway", 5.0, _seconds(0),
         "seconds of clock difference allowed when checking exp, nbf and iat",
         attr="auth_leeway"),
    Spec("auth", "timeout", 10.0, _seconds(0.1),
         "seconds a session may stay without a valid auth in 'required' mode",
         attr="auth_timeout"),
)

# Settings a reload leaves as they are: only a restart of the server applies them.
RESTART_ONLY = ("port", "listen", "workers", "node", "admin", "admin_secret", "log_format",
                "redis", "redis_prefix", "redis_timeout", "redis_heartbeat",
                "redis_max_queued", "redis_max_queued_bytes")


@dataclass(frozen=True)
class Settings:
    """The validated settings of one pushsvc process."""
    port: int = 8080
    listen: list[str] = field(default_factory=list)
    workers: int | None = None
    node: str = "node"
    app: str = ""
    admin: str = DEFAULT_ADMIN
    admin_secret: str = ""
    log_format: str = "text"
    max_message_bytes: int = 65536
    max_connections: int = 10000
    max_groups_per_session: int = 100
    max_buffered_bytes: int = 4 * 1024 * 1024
    max_targets: int = 100
    max_batch_messages: int = 1000
    max_worker_backlog: int = 64 * 1024 * 1024
    max_batch_bytes: int = 1024 * 1024
    max_connections_per_ip: int = 256
    messages_per_second: float = 50.0
    message_burst: int = 200
    max_header_bytes: int = 16384
    ping_interval: float = 25.0
    ping_timeout: float = 60.0
    handshake_timeout: float = 10.0
    close_timeout: float = 3.0
    restart_drain: float = 5.0
    ttl: float = 60.0
    max_per_channel: int = 100
    max_memory: int = 64 * 1024 * 1024
    redis: str = ""
    redis_prefix: str = "pushsvc:"
    redis_timeout: float = 5.0
    redis_heartbeat: float = 2.0
    redis_max_queued: int = 10000
    redis_max_queued_bytes: int = 16 * 1024 * 1024
    api_keys: list[str] = field(default_factory=list)
    api_read_keys: list[str] = field(default_factory=list)
    allowed_origins: list[str] = field(default_factory=list)
    trusted_proxies: list[str] = field(default_factory=list)
    client_send: str = "joined"
    namespace_separator: str = ":"
    namespaces: dict[str, dict[str, Any]] = field(default_factory=dict)
    proxy_join_url: str = ""
    proxy_send_url: str = ""
    proxy_timeout: float = 2.0
    proxy_max_in_flight: int = 100
    proxy_on_error: str = "deny"
    proxy_secret: str = ""
    auth_mode: str = "none"
    jwt_secret: str = ""
    jwt_public_key_file: str = ""
    jwt_algorithms: list[str] = field(default_factory=lambda: ["HS256", "RS256", "ES256"])
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_require_exp: bool = True
    auth_leeway: float = 5.0
    auth_timeout: float = 10.0
    config_path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # the command line's, by key

    def reread(self) -> "Settings":
        """The settings the config file holds now, with the same command line
        (a reload); raises ConfigError like start-up."""
        return build_settings(self.config_path, self.overrides)

    def reloaded(self, new: "Settings") -> "Settings":
        """``new``, but with this one's RESTART_ONLY settings (a reload keeps them)."""
        return replace(new, **{key: getattr(self, key) for key in RESTART_ONLY})

    def needs_restart(self, new: "Settings") -> list[str]:
        """The RESTART_ONLY settings that ``new`` changes."""
        return [key for key in RESTART_ONLY if getattr(self, key) != getattr(new, key)]

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (how the master hands them to workers)."""
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any]) -> "Settings":
        return cls(**values)

    @property
    def endpoints(self) -> list[str]:
        """The listening endpoints: ``listen``, or ``tcp:PORT`` when it is empty."""
        return self.listen or [f"tcp:{self.port}:backlog={DEFAULT_BACKLOG}"]


def read_toml(path: str) -> dict[str, dict[str, Any]]:
    """Read a config file into ``{section: {key: value}}``; unknown keys are errors."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError("--config", f"cannot read {path}: {e.strerror}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError("--config", f"{path} is not valid TOML: {e}")
    known = {(s.section, s.key) for s in SPECS}
    for section, table in data.items():
        if section == "namespaces":  # tables of their own: build_settings checks them
            continue
        if not isinstance(table, dict):
            raise ConfigError(section, f"unknown setting in {path}")
        for key in table:
            if (section, key) not in known:
                raise ConfigError(f"{section}.{key}", f"unknown setting in {path}")
    return data


def _check_auth(values: dict[str, Any]) -> None:
    """The [auth] settings together: a mode that needs tokens has a key, the
    key file is readable, and each key has an algorithm to check with."""
    from .tokens import HMAC_ALGORITHMS, KeyFileError, keys_by_algorithm, load_public_keys
    mode, secret, path = (values["auth_mode"], values["jwt_secret"],
                          values["jwt_public_key_file"])
    if mode != "none" and not secret and not path:
        raise ConfigError("auth.mode", f"{mode!r} needs a key: set auth.jwt_secret (HS256) "
                                       "or auth.jwt_public_key_file (RS256, ES256)")
    algorithms = values["jwt_algorithms"]
    if secret and not any(alg in HMAC_ALGORITHMS for alg in algorithms):
        raise ConfigError("auth.jwt_algorithms", "lists no HS algorithm (HS256) for "
                                                 "auth.jwt_secret")
    if path:
        try:
            keys = load_public_keys(path)
        except KeyFileError as e:
            raise ConfigError("auth.jwt_public_key_file", str(e))
        if not keys_by_algorithm([a for a in algorithms if a not in HMAC_ALGORITHMS],
                                 "", keys):
            raise ConfigError("auth.jwt_algorithms",
                              f"lists no algorithm for the keys in {path} (RS256 for an "
                              "RSA key, ES256 for an EC P-256 key)")


def _check_namespaces(raw: Any, values: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The ``[namespaces.NAME]`` tables, checked, each with the proxy URL its
    rules need."""
    from .namespaces import TableError, check_tables
    try:
        tables = check_tables(raw, values["namespace_separator"])
    except TableError as e:
        raise ConfigError(e.key, e.problem)
    needs = (("join", "proxy_join_url", "proxy.join_url"),
             ("client_send", "proxy_send_url", "proxy.send_url"))
    for name, table in tables.items():
        for key, attr, setting in needs:
            if table.get(key) == "proxy" and not values[attr]:
                raise ConfigError(f"namespaces.{name or chr(34) * 2}.{key}",
                                  f"'proxy' needs {setting} (the backend's URL)")
    return tables


def build_settings(config_path: str | None = None,
                   overrides: dict[str, Any] | None = None) -> Settings:
    """Fold defaults, the TOML file and command-line ``overrides`` (by key).

    Raises ConfigError naming the first wrong setting.
    """
    file_values = read_toml(config_path) if config_path else {}
    overrides = overrides or {}
    values: dict[str, Any] = {}
    for spec in SPECS:
        raw = spec.default
        name = spec.setting
        if spec.key in file_values.get(spec.section, {}):
            raw = file_values[spec.section][spec.key]
        if overrides.get(spec.key) is not None:
            raw = overrides[spec.key]
            name = f"--{spec.flag}" if spec.flag else name
            if spec.parse is not None and isinstance(raw, str):
                raw = spec.parse(raw)
        try:
            values[spec.name] = spec.check(raw)
        except ValueError as e:
            raise ConfigError(name, str(e))
    if values["admin"].startswith("tcp") and not values["admin_secret"]:
        raise ConfigError("server.admin_secret",
                          "must be set when the admin endpoint is tcp:")
    _check_auth(values)
    values["namespaces"] = _check_namespaces(file_values.get("namespaces", {}), values)
    if values["ping_timeout"] < values["ping_interval"]:
        raise ConfigError("timeouts.ping_timeout",
                          "must be at least timeouts.ping_interval")
    return Settings(config_path=os.path.abspath(config_path) if config_path else None,
                    overrides={k: v for k, v in overrides.items() if v is not None},
                    **values)
