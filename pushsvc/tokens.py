"""Client tokens: JSON Web Tokens checked with PyJWT.  No I/O when verifying.

A ``TokenVerifier`` is built from the ``[auth]`` settings: the HMAC secret
(``jwt_secret``, for HS256/384/512) and the PEM public keys of
``jwt_public_key_file`` (RSA keys for RS*/PS*, EC keys for ES*), read once
when the verifier is made (at start and at each reload), and the algorithms
it accepts (``jwt_algorithms``).  ``verify(token, now)`` returns the token's
``Claims`` or raises ``TokenError`` whose text says what is wrong.

How a token is checked:

- its header's ``alg`` must be one of the accepted algorithms for which there
  is a key: ``none`` never is, and an HS* token is only ever checked with the
  secret, an RS*/PS*/ES* token only with a public key of the matching kind
  (so an HS256 token "signed" with the RSA public key as its secret is
  refused).  PyJWT is always given ``algorithms=[alg]`` explicitly;
- the signature, with each key of that kind in turn (the file may hold
  several keys, for a rotation);
- ``aud`` and ``iss`` when ``jwt_audience`` / ``jwt_issuer`` are set (a token
  with an ``aud`` is refused when no audience is set);
- ``exp`` (required unless ``require_exp`` is off), ``nbf`` and ``iat``
  against ``now`` (the engine's clock), with ``leeway`` seconds of slack;
- ``sub``: the user, a name as the protocol allows (``protocol.name``);
- ``groups`` and ``tags`` (optional): lists of names the session joins and is
  tagged with; at most ``max_groups_per_session`` groups and ``MAX_TAGS`` tags.
  A group name with ``*`` in it is a pattern: the session is not joined to
  it, but may join every group it matches (``namespaces.granted``).

A *subscription token* (``verify_subscription``) lets one user join one group:
claims ``sub`` (the session's user), ``group`` and ``exp``, same keys and
algorithms.  A token with a ``group`` claim never authenticates a connection.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable

import jwt
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from .protocol import ProtocolError, name

HMAC_ALGORITHMS = ("HS256", "HS384", "HS512")
RSA_ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")
EC_ALGORITHMS = ("ES256", "ES384", "ES512")
ALGORITHMS = HMAC_ALGORITHMS + RSA_ALGORITHMS + EC_ALGORITHMS

# The curve each ES algorithm signs with (RFC 7518, 3.4).
EC_CURVES = {"ES256": "secp256r1", "ES384": "secp384r1", "ES512": "secp521r1"}

# An HMAC secret must be at least as long as the hash (RFC 7518, 3.2): HS256's.
MIN_SECRET_BYTES = 32
MIN_RSA_BITS = 2048

# Tags one token may give its session.
MAX_TAGS = 100

# Longer tokens are refused before they are parsed.
MAX_TOKEN_CHARS = 16384

PEM_RE = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----.+?-----END \1-----", re.DOTALL)

# PyJWT checks the signature, the header, aud and iss; the times are checked
# here against the engine's clock, and sub, groups and tags by protocol.name.
_JWT = jwt.PyJWT(options={"verify_exp": False, "verify_nbf": False, "verify_iat": False,
                          "verify_sub": False, "verify_jti": False,
                          "enforce_minimum_key_length": True})

# PyJWT's errors, said for a client.
_EXPLAINED = (
    (jwt.InvalidAudienceError, "the token is not for this server (claim 'aud')"),
    (jwt.InvalidIssuerError, "the token is not from the expected issuer (claim 'iss')"),
    (jwt.InvalidAlgorithmError, "the token's algorithm is not accepted"),
    (jwt.DecodeError, "malformed token: not a JSON Web Token"),
)


class TokenError(Exception):
    """A token is refused; ``str()`` says why, in words for the client."""


class KeyFileError(ValueError):
    """``jwt_public_key_file`` cannot be used; ``str()`` is one line."""


@dataclass(frozen=True, slots=True)
class Claims:
    """What a verified token says."""
    user: str
    groups: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    expires: float | None = None  # its ``exp`` (seconds since the epoch), if any
    payload: dict[str, Any] | None = field(default=None, compare=False)  # every claim


def check_secret(secret: str) -> str:
    """``jwt_secret``: '' (none) or at least MIN_SECRET_BYTES bytes."""
    if not isinstance(secret, str):
        raise ValueError(f"must be a string, got {secret!r}")
    if secret and len(secret.encode("utf-8")) < MIN_SECRET_BYTES:
        raise ValueError(f"must be at least {MIN_SECRET_BYTES} bytes long (HS256 wants a "
                         f"256-bit secret), got {len(secret.encode('utf-8'))}")
    return secret


def check_algorithms(value: Any) -> list[str]:
    """``jwt_algorithms``: a non-empty list of ALGORITHMS."""
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError("must be a non-empty list of algorithm names such as \"HS256\"")
    for alg in value:
        if alg.lower() == "none":
            raise ValueError("'none' (unsigned tokens) is never accepted")
        if alg not in ALGORITHMS:
            raise ValueError(f"unknown algorithm {alg!r}; known: {', '.join(ALGORITHMS)}")
    return list(dict.fromkeys(value))


def load_public_keys(path: str) -> list[Any]:
    """The PEM public keys (or certificates' keys) in the file at ``path``:
    RSA keys of at least MIN_RSA_BITS bits and EC keys.  KeyFileError, in one
    line, when it cannot be read or holds anything else."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise KeyFileError(f"cannot read {path}: {e.strerror}")
    keys = []
    for block in PEM_RE.finditer(data):
        kind = block.group(1).decode("ascii")
        if "PRIVATE" in kind:
            raise KeyFileError(f"{path} holds a private key; give the public key only "
                               "(openssl pkey -in key.pem -pubout)")
        try:
            if kind in ("CERTIFICATE", "X509 CERTIFICATE"):
                key = x509.load_pem_x509_certificate(block.group(0)).public_key()
            else:
                key = load_pem_public_key(block.group(0))
        except ValueError as e:
            raise KeyFileError(f"{path}: a {kind} block that cannot be read: "
                               f"{str(e).splitlines()[0] if str(e) else 'bad data'}")
        if isinstance(key, rsa.RSAPublicKey):
            if key.key_size < MIN_RSA_BITS:
                raise KeyFileError(f"{path}: an RSA key of {key.key_size} bits; at least "
                                   f"{MIN_RSA_BITS} are needed")
        elif isinstance(key, ec.EllipticCurvePublicKey):
            if key.curve.name not in EC_CURVES.values():
                raise KeyFileError(f"{path}: an EC key on curve {key.curve.name}; JWT "
                                   "signs with P-256, P-384 or P-521")
        else:
            raise KeyFileError(f"{path}: a {type(key).__name__}; only RSA and EC public "
                               "keys can check tokens")
        keys.append(key)
    if not keys:
        raise KeyFileError(f"{path} holds no PEM public key "
                           "(-----BEGIN PUBLIC KEY----- ...)")
    return keys


def _key_fits(alg: str, key: Any) -> bool:
    if alg in RSA_ALGORITHMS:
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == EC_CURVES[alg]


def keys_by_algorithm(algorithms: Iterable[str], secret: str,
                      public_keys: Iterable[Any]) -> dict[str, list[Any]]:
    """The keys to check each algorithm with: only algorithms that have one."""
    public_keys = list(public_keys)
    found: dict[str, list[Any]] = {}
    for alg in algorithms:
        if alg in HMAC_ALGORITHMS:
            keys = [secret.encode("utf-8")] if secret else []
        else:
            keys = [k for k in public_keys if _key_fits(alg, k)]
        if keys:
            found[alg] = keys
    return found


def _number(payload: dict[str, Any], claim: str) -> float | None:
    value = payload.get(claim)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise TokenError(f"the token's claim '{claim}' must be a number of seconds "
                         "since 1970")
    return value


def _names(payload: dict[str, Any], claim: str, most: int) -> tuple[str, ...]:
    value = payload.get(claim)
    if value is None:
        return ()
    if not isinstance(value, list):
        raise TokenError(f"the token's claim '{claim}' must be a list of names")
    if len(value) > most:
        raise TokenError(f"the token's claim '{claim}' lists {len(value)} names; "
                         f"at most {most} are allowed")
    try:
        return tuple(dict.fromkeys(name(v, claim) for v in value))
    except ProtocolError as e:
        raise TokenError(f"the token's claim '{claim}': {e.message}")


class TokenVerifier:
    """Checks client tokens against the configured keys; see the module doc."""

    def __init__(self, algorithms: Iterable[str], secret: str = "",
                 public_keys: Iterable[Any] = (), audience: str = "", issuer: str = "",
                 leeway: float = 0.0, require_exp: bool = True, max_groups: int = 100):
        self.keys = keys_by_algorithm(algorithms, secret, public_keys)
        self.algorithms = tuple(self.keys)
        self.audience = audience or None
        self.issuer = issuer or None
        self.leeway = leeway
        self.require_exp = require_exp
        self.max_groups = max_groups

    @classmethod
    def from_settings(cls, settings) -> "TokenVerifier | None":
        """The verifier the settings ask for (reading the public key file),
        or None when they configure no key.  KeyFileError if the file
        cannot be used."""
        if not settings.jwt_secret and not settings.jwt_public_key_file:
            return None
        keys = (load_public_keys(settings.jwt_public_key_file)
                if settings.jwt_public_key_file else [])
        return cls(settings.jwt_algorithms, settings.jwt_secret, keys,
                   audience=settings.jwt_audience, issuer=settings.jwt_issuer,
                   leeway=settings.auth_leeway, require_exp=settings.jwt_require_exp,
                   max_groups=settings.max_groups_per_session)

    def verify(self, token: str, now: float) -> Claims:
        """The claims of a connection token at time ``now``; TokenError if it
        is refused."""
        payload = self._payload(token)
        if "group" in payload:
            raise TokenError("this is a subscription token (claim 'group'): send it with "
                             "join, not auth")
        return self._claims(payload, now)

    def verify_subscription(self, token: str, user: str | None, group: str,
                            now: float) -> float | None:
        """Check a subscription token: a token for ``group`` alone (claim
        ``group``) given to ``user`` (claim ``sub``); its expiry (``exp``), or
        TokenError if it is refused."""
        payload = self._payload(token)
        if payload.get("group") != group:
            raise TokenError(f"the token is not for group '{group}' (claim 'group')")
        expires = self._times(payload, now)
        if user is None:
            raise TokenError("authenticate first: a subscription token is for a user")
        if payload.get("sub") != user:
            raise TokenError("the token is for another user (claim 'sub')")
        return expires

    def _payload(self, token: str) -> dict[str, Any]:
        """The payload of ``token`` once its signature, aud and iss are checked."""
        if not isinstance(token, str) or not token:
            raise TokenError("the token must be a non-empty string")
        if len(token) > MAX_TOKEN_CHARS:
            raise TokenError(f"the token is longer than {MAX_TOKEN_CHARS} characters")
        try:
            header = jwt.get_unverified_header(token)
        except (jwt.PyJWTError, ValueError, TypeError, RecursionError):
            raise TokenError("malformed token: not a JSON Web Token")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.keys:
            shown = repr(alg) if isinstance(alg, str) else "missing"
            raise TokenError(f"the token's algorithm ({shown}) is not accepted; this "
                             f"server accepts {', '.join(self.algorithms)}")
        payload = None
        for key in self.keys[alg]:
            try:
                payload = _JWT.decode(token, key, algorithms=[alg], audience=self.audience,
                                      issuer=self.issuer)
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.MissingRequiredClaimError as e:
                raise TokenError(f"the token has no '{e.claim}' claim")
            except jwt.PyJWTError as e:
                raise TokenError(next((text for kind, text in _EXPLAINED
                                       if isinstance(e, kind)), "the token is not valid"))
            except (ValueError, TypeError, RecursionError):  # a payload nested too deep
                raise TokenError("malformed token: not a JSON Web Token")
        if payload is None:
            raise TokenError("bad token signature")
        if not isinstance(payload, dict):
            raise TokenError("malformed token: not a JSON Web Token")
        return payload

    def _claims(self, payload: dict[str, Any], now: float) -> Claims:
        expires = self._times(payload, now)
        if payload.get("sub") is None:
            raise TokenError("the token has no 'sub' claim (the user)")
        try:
            user = name(payload["sub"], "sub")
        except ProtocolError as e:
            raise TokenError(f"the token's claim 'sub': {e.message}")
        return Claims(user, _names(payload, "groups", self.max_groups),
                      _names(payload, "tags", MAX_TAGS), expires, payload)

    def _times(self, payload: dict[str, Any], now: float) -> float | None:
        """Check ``exp``, ``nbf`` and ``iat`` against ``now``; the expiry."""
        expires = _number(payload, "exp")
        if expires is None:
            if self.require_exp:
                raise TokenError("the token has no 'exp' claim (expiry)")
        elif expires <= now - self.leeway:
            raise TokenError("token expired")
        not_before = _number(payload, "nbf")
        if not_before is not None and not_before > now + self.leeway:
            raise TokenError("the token is not valid yet (claim 'nbf')")
        issued = _number(payload, "iat")
        if issued is not None and issued > now + self.leeway:
            raise TokenError("the token was issued in the future (claim 'iat'); "
                             "are the clocks right?")
        return expires
