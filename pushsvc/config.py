"""Settings: the TOML file and the command line folded into one validated object.

Every setting is declared once in ``specs.SPECS``: its TOML section and key,
its default, how to check it, and (for some) its command-line flag.  The
command-line options in ``tap.py`` and the fields of ``Settings`` are
generated from the same table, so a setting can never exist in one place and
not the other.  The command line wins over the file, which wins over the
default.
"""

from __future__ import annotations

import copy
import os
import tomllib
from dataclasses import asdict, field, make_dataclass, replace
from typing import Any

from .checks import DEFAULT_ADMIN, default_node_name, exposed_endpoints, on_loopback
from .specs import RESTART_ONLY, SPECS, Spec

__all__ = ["ConfigError", "DEFAULT_ADMIN", "SPECS", "Settings", "build_settings",
           "default_node_name", "exposed_endpoints", "on_loopback"]


class ConfigError(Exception):
    """A setting is wrong.  ``str()`` names the setting and what is wrong."""

    def __init__(self, setting: str, problem: str):
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


# Twisted's default listen backlog (50) turns a reconnect storm into 1 s SYN
# retries; the kernel caps this at net.core.somaxconn.
DEFAULT_BACKLOG = 1024


class _Behaviour:
    """What ``Settings`` does besides holding the values."""

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


def _default(spec: Spec):
    """The field of one setting: its default, as checked (``"auto"`` -> None)."""
    value = spec.check(spec.default)
    if isinstance(value, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(value))
    return field(default=value)


# The validated settings of one pushsvc process: a frozen dataclass with one
# field per setting of SPECS, and the [namespaces] tables, the config file's
# path and the command line's values (by key).  ``pusher_apps`` holds the
# ``[[pusher.apps]]`` tables, checked and with their defaults (docs/pusher.md).
Settings = make_dataclass(
    "Settings",
    [(spec.name, Any, _default(spec)) for spec in SPECS]
    + [("namespaces", dict, field(default_factory=dict)),
       ("pusher_apps", list, field(default_factory=list)),
       ("config_path", Any, field(default=None)),
       ("overrides", dict, field(default_factory=dict))],
    bases=(_Behaviour,), frozen=True)
Settings.__module__ = __name__
Settings.__doc__ = "The validated settings of one pushsvc process (one field per setting)."


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
        if section == "pusher" and isinstance(table, dict):  # [[pusher.apps]]: likewise
            for key in table:
                if key != "apps":
                    raise ConfigError(f"pusher.{key}", f"unknown setting in {path} "
                                                       "(known: [[pusher.apps]])")
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


def _check_pusher(raw: Any, values: dict[str, Any]) -> list[dict[str, Any]]:
    """The ``[[pusher.apps]]`` tables, checked, with their defaults; each app
    without a ``[namespaces."pusher.<id>"]`` table gets one that keeps its
    channels server-only for pushsvc's own clients (``join = "server"``,
    ``client_send = "none"``): only Pusher's signed API publishes there."""
    from .pusher.apps import AppTableError, check_apps, server_only_namespaces
    try:
        apps = check_apps(raw, values["namespace_separator"])
    except AppTableError as e:
        raise ConfigError(e.key, e.problem)
    values["namespaces"] = server_only_namespaces(apps, values["namespaces"])
    return apps


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
    if values["redis_urls"] and overrides.get("url") is None:  # --redis wins
        if values["redis"]:
            raise ConfigError("redis.urls", "set redis.url or redis.urls, not both")
        values["redis"] = values["redis_urls"]
    values["namespaces"] = _check_namespaces(file_values.get("namespaces", {}), values)
    values["pusher_apps"] = _check_pusher(file_values.get("pusher", {}).get("apps"), values)
    if values["ping_timeout"] < values["ping_interval"]:
        raise ConfigError("timeouts.ping_timeout",
                          "must be at least timeouts.ping_interval")
    return Settings(config_path=os.path.abspath(config_path) if config_path else None,
                    overrides={k: v for k, v in overrides.items() if v is not None},
                    **values)
