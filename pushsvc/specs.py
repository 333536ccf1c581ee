"""Every setting, declared once: its TOML section and key, its default, its
check (``checks``), its help and, for some, its command-line flag.  The
command-line options (``tap.Options``) and the ``Settings`` fields
(``config.Settings``) are made from this table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .checks import (DEFAULT_ADMIN, admin_endpoint, app_module, backend_url, boolean, choice,
                     endpoints, integer, jwt_algorithms, jwt_secret, networks, node_name,
                     origins, per_second, redis_prefix, redis_url, redis_urls, seconds, separator,
                     strings, text, whole, workers)


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
    Spec("server", "port", 8080, integer(0, 65535),
         "TCP port for WebSocket (/ws) and the HTTP API", flag="port", parse=whole),
    Spec("server", "listen", [], endpoints,
         "Twisted endpoint strings to listen on, instead of the port "
         "(repeatable)", flag="listen"),
    Spec("server", "workers", "auto", workers,
         "worker processes: 'auto' = one per CPU, 0 = one process", flag="workers",
         parse=whole),
    Spec("server", "node", "", node_name,
         "this machine's name in session ids (default: host name)", flag="node"),
    Spec("server", "app", "", app_module,
         "application module with hooks: a dotted module name or a .py file; "
         "'' = none", flag="app"),
    Spec("server", "admin", DEFAULT_ADMIN, admin_endpoint,
         "endpoint of the admin console (pushsvc-admin); '' = none", flag="admin"),
    Spec("server", "admin_secret", "", text,
         "secret the admin console must give; required for a tcp: admin endpoint"),
    Spec("log", "format", "text", choice("text", "json"),
         "log format: 'text' lines, or 'json' (one JSON object per line)",
         flag="log-format", attr="log_format"),
    Spec("limits", "max_message_bytes", 65536, integer(64, 16 * 1024 * 1024),
         "largest WebSocket message or HTTP body accepted, in bytes"),
    Spec("limits", "max_connections", 10000, integer(1),
         "WebSocket sessions this process holds at once"),
    Spec("limits", "max_groups_per_session", 100, integer(1),
         "groups one session may be in"),
    Spec("limits", "max_buffered_bytes", 4 * 1024 * 1024, integer(4096),
         "bytes waiting to be written to one slow client before it is closed "
         "with 1013"),
    Spec("limits", "max_targets", 100, integer(1),
         "names in one address (e.g. a list of groups)"),
    Spec("limits", "max_batch_messages", 1000, integer(1),
         "messages in one POST /api/batch"),
    Spec("limits", "max_worker_backlog", 64 * 1024 * 1024, integer(1024 * 1024),
         "bytes the master may hold for one worker that does not read its pipe; "
         "past it the worker is restarted"),
    Spec("limits", "max_batch_bytes", 1024 * 1024, integer(1024, 256 * 1024 * 1024),
         "largest POST /api/batch body, in bytes"),
    Spec("limits", "max_connections_per_ip", 256, integer(0),
         "connections one client address may hold in this process (per "
         "worker); past it 429; 0 = no limit"),
    Spec("limits", "count_interval", 1.0, seconds(0.05),
         "seconds between the exchanges of each process's Pusher connections "
         "per app with the others (the pool's hub, or Redis), for the apps' "
         "max_connections across the cluster"),
    Spec("limits", "messages_per_second", 50.0, per_second,
         "messages (and pings) a session may send per second on average; "
         "past it error rate_limited; 0 = no limit"),
    Spec("limits", "message_burst", 200, integer(1),
         "messages a session may send at once above the rate; this many "
         "refused in a 10 s window, more than served, close it with 1008"),
    Spec("limits", "max_header_bytes", 16384, integer(1024, 1024 * 1024),
         "largest HTTP request line plus headers, in bytes; past it 431"),
    Spec("timeouts", "ping_interval", 25.0, seconds(0.1),
         "seconds between WebSocket pings to an idle client"),
    Spec("timeouts", "ping_timeout", 60.0, seconds(0.1),
         "seconds of silence after which a client is dropped"),
    Spec("timeouts", "handshake_timeout", 10.0, seconds(0.1),
         "seconds a new connection has to finish its HTTP request or "
         "WebSocket handshake"),
    Spec("timeouts", "close_timeout", 3.0, seconds(0.1),
         "seconds to wait for a client's close handshake (and for all "
         "clients at shutdown)"),
    Spec("timeouts", "restart_drain", 5.0, seconds(0),
         "seconds over which a worker retired by restart-workers spreads the "
         "closes of its clients; 0 = all at once", attr="restart_drain"),
    Spec("history", "ttl", 60.0, seconds(0),
         "seconds a message is kept for clients that resume; 0 = no history"),
    Spec("history", "max_per_channel", 100, integer(1),
         "messages kept per channel (user, group, tag, all)"),
    Spec("history", "max_memory", 64 * 1024 * 1024, integer(64 * 1024),
         "bytes of kept messages in all; past it the oldest go first"),
    Spec("redis", "url", "", redis_url,
         "Redis for many nodes: redis://HOST:PORT/DB, "
         "redis+sentinel://HOST:PORT[,HOST:PORT]/SERVICE/DB or "
         "redis+cluster://HOST:PORT[,HOST:PORT]; several redis:// or "
         "redis+sentinel://, separated by spaces, are shards; '' = none",
         flag="redis", attr="redis"),
    Spec("redis", "urls", [], redis_urls,
         "Redis shards: a list of URLs, each channel on one (instead of url)",
         attr="redis_urls"),
    Spec("redis", "cluster_shards", 16, integer(1, 256),
         "logical shards of a Redis Cluster (redis+cluster://), each in one slot "
         "with its own history; the same on every node", attr="redis_cluster_shards"),
    Spec("redis", "prefix", "pushsvc:", redis_prefix,
         "start of every Redis channel and key this cluster uses",
         attr="redis_prefix"),
    Spec("redis", "timeout", 5.0, seconds(0.1),
         "seconds a Redis command, connection attempt or cluster-wide command "
         "may take", attr="redis_timeout"),
    Spec("redis", "heartbeat", 2.0, seconds(0.1),
         "seconds between a process's heartbeats in Redis; one silent for 3 "
         "is taken for gone", attr="redis_heartbeat"),
    Spec("redis", "max_queued_messages", 10000, integer(0),
         "messages kept for other nodes while Redis is away; past it the "
         "oldest are dropped", attr="redis_max_queued"),
    Spec("redis", "max_queued_bytes", 16 * 1024 * 1024, integer(0),
         "bytes of messages kept for other nodes while Redis is away",
         attr="redis_max_queued_bytes"),
    Spec("http", "api_keys", [], strings,
         "bearer keys for the HTTP API; empty = no key needed"),
    Spec("http", "api_read_keys", [], strings,
         "bearer keys that may only read (GET) the HTTP API; a POST with one is 403"),
    Spec("http", "allowed_origins", [], origins,
         "browser origins allowed to open a WebSocket (Origin header); "
         "empty = any (development only)"),
    Spec("http", "server_header", "", text,
         "the Server header of HTTP answers and WebSocket handshakes; '' = none "
         "(no software version given away)"),
    Spec("http", "trusted_proxies", [], networks,
         "reverse proxies (IP addresses or networks) whose X-Forwarded-For "
         "names the client; empty = the header is ignored"),
    Spec("policy", "client_send", "joined", choice("joined", "any", "none"),
         "what a client's send may address: 'joined' groups only, 'any' "
         "address, or 'none'"),
    Spec("policy", "namespace_separator", ":", separator,
         "what ends a group's namespace: 'team:7' is in namespace 'team'"),
    # The backend that decides joins and sends (pushsvc/proxy.py, docs/security.md).
    Spec("proxy", "join_url", "", backend_url,
         "URL the workers POST a join to in namespaces with join = 'proxy'; '' = none",
         attr="proxy_join_url"),
    Spec("proxy", "send_url", "", backend_url,
         "URL the workers POST a client's send to in namespaces with client_send = "
         "'proxy'; '' = none", attr="proxy_send_url"),
    Spec("proxy", "timeout", 2.0, seconds(0.1),
         "seconds the backend has to answer", attr="proxy_timeout"),
    Spec("proxy", "max_in_flight", 100, integer(1),
         "requests to the backend one worker has under way at once; past it the "
         "request counts as failed", attr="proxy_max_in_flight"),
    Spec("proxy", "on_error", "deny", choice("deny", "allow"),
         "what a join or send gets when the backend fails (error, timeout, bad "
         "answer)", attr="proxy_on_error"),
    Spec("proxy", "secret", "", text,
         "sent to the backend as 'Authorization: Bearer SECRET'; '' = no header",
         attr="proxy_secret"),
    # Client tokens (pushsvc/tokens.py, docs/protocol.md#authentication).
    Spec("auth", "mode", "none", choice("none", "token", "required"),
         "client authentication: 'none' (development: auth with a user name is "
         "trusted), 'token' (auth needs a valid token), 'required' (a valid "
         "token before any op but auth and ping)", attr="auth_mode"),
    Spec("auth", "jwt_secret", "", jwt_secret,
         "shared secret (at least 32 bytes) for HS256 tokens; '' = none"),
    Spec("auth", "jwt_public_key_file", "", text,
         "PEM file of the public key(s) for RS256/ES256 tokens; '' = none"),
    Spec("auth", "jwt_algorithms", ["HS256", "RS256", "ES256"], jwt_algorithms,
         "token algorithms accepted (each one that has a key)"),
    Spec("auth", "jwt_audience", "", text,
         "when set, a token's 'aud' must name it; '' = tokens must have no 'aud'"),
    Spec("auth", "jwt_issuer", "", text,
         "when set, a token's 'iss' must be it; '' = not checked"),
    Spec("auth", "require_exp", True, boolean,
         "tokens must carry 'exp' (an expiry)", attr="jwt_require_exp"),
    Spec("auth", "leeway", 5.0, seconds(0),
         "seconds of clock difference allowed when checking exp, nbf and iat",
         attr="auth_leeway"),
    Spec("auth", "timeout", 10.0, seconds(0.1),
         "seconds a session may stay without a valid auth in 'required' mode",
         attr="auth_timeout"),
)

# Settings a reload leaves as they are: only a restart of the server applies them.
RESTART_ONLY = ("port", "listen", "workers", "node", "admin", "admin_secret", "log_format",
                "redis", "redis_urls", "redis_cluster_shards", "redis_prefix", "redis_timeout",
                "redis_heartbeat", "count_interval",
                "redis_max_queued", "redis_max_queued_bytes")
