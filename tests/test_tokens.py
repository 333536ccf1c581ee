"""Client tokens: the verifier (PyJWT), the [auth] settings, and tokens over
real sockets (auth with a token, ``?token=``, the "required" mode, expiry and
refresh), timed by a task.Clock."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
from types import SimpleNamespace

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from twisted.internet.task import Clock
from twisted.logger import Logger
from twisted.trial import unittest

from pushsvc.app import App
from pushsvc.client import ServerError, connect
from pushsvc.config import ConfigError, build_settings, exposed_endpoints
from pushsvc.tap import warn_if_open
from pushsvc.tokens import (MAX_TAGS, Claims, KeyFileError, TokenError, TokenVerifier,
                            load_public_keys)
from tests.helpers import (ChildTestCase, ServerTestCase, eventually, free_port, run,
                           settings)

NOW = 1_700_000_000.0
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cret!"   # 35 bytes
OTHER_SECRET = "another-secret-another-secret-another"

# Keys made once for the module (an RSA key takes a moment).
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
RSA_KEY_2 = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())


def pem(private_key) -> bytes:
    return private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def token(sub="alice", key=SECRET, alg="HS256", exp=NOW + 60, headers=None, **claims):
    """A signed token; ``exp=None`` leaves the claim out."""
    payload = dict(claims)
    if sub is not None:
        payload["sub"] = sub
    if exp is not None:
        payload["exp"] = exp
    return jwt.encode(payload, key, algorithm=alg, headers=headers)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, secret: bytes) -> str:
    """An HS token signed by hand, with any secret (PyJWT refuses a PEM key)."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def write(test: unittest.TestCase, data: bytes) -> str:
    path = test.mktemp()
    with open(path, "wb") as f:
        f.write(data)
    return path


class VerifierTests(unittest.TestCase):
    """TokenVerifier alone: what it accepts and what it refuses, and why."""

    def verifier(self, **kw) -> TokenVerifier:
        kw.setdefault("algorithms", ["HS256", "RS256", "ES256"])
        kw.setdefault("secret", SECRET)
        return TokenVerifier(**kw)

    def refused(self, verifier: TokenVerifier, text: str, now: float = NOW) -> str:
        return str(self.assertRaises(TokenError, verifier.verify, text, now))

    def test_hs256_with_claims(self):
        claims = self.verifier().verify(
            token(groups=["lobby", "vip", "lobby"], tags=["beta"], iat=NOW - 5, nbf=NOW - 5),
            NOW)
        self.assertEqual(claims, Claims("alice", ("lobby", "vip"), ("beta",), NOW + 60))

    def test_bad_signature(self):
        self.assertEqual(self.refused(self.verifier(), token(key=OTHER_SECRET)),
                         "bad token signature")

    def test_expired_and_the_leeway(self):
        v = self.verifier(leeway=5.0)
        self.assertEqual(self.refused(v, token(exp=NOW - 5)), "token expired")
        self.assertEqual(v.verify(token(exp=NOW - 4), NOW).user, "alice")
        self.assertEqual(self.refused(self.verifier(), token(exp=NOW)), "token expired")
        self.assertEqual(self.refused(v, token(exp="soon")),
                         "the token's claim 'exp' must be a number of seconds since 1970")

    def test_exp_required_unless_told(self):
        self.assertEqual(self.refused(self.verifier(), token(exp=None)),
                         "the token has no 'exp' claim (expiry)")
        claims = self.verifier(require_exp=False).verify(token(exp=None), NOW)
        self.assertEqual((claims.user, claims.expires), ("alice", None))

    def test_not_yet_valid(self):
        v = self.verifier(leeway=5.0)
        self.assertEqual(self.refused(v, token(nbf=NOW + 6)),
                         "the token is not valid yet (claim 'nbf')")
        self.assertIn("issued in the future", self.refused(v, token(iat=NOW + 6)))
        self.assertEqual(v.verify(token(nbf=NOW + 5, iat=NOW + 5), NOW).user, "alice")

    def test_sub_is_the_user(self):
        v = self.verifier()
        self.assertEqual(self.refused(v, token(sub=None)),
                         "the token has no 'sub' claim (the user)")
        self.assertIn("'sub'", self.refused(v, hand_made(
            {"alg": "HS256", "typ": "JWT"}, {"sub": 42, "exp": NOW + 60}, SECRET.encode())))
        self.assertIn("longer than", self.refused(v, token(sub="x" * 201)))

    def test_alg_none_is_never_accepted(self):
        unsigned = jwt.encode({"sub": "alice", "exp": NOW + 60}, None, algorithm="none")
        self.assertEqual(self.refused(self.verifier(), unsigned),
                         "the token's algorithm ('none') is not accepted; this server "
                         "accepts HS256")
        self.assertIn("(missing)", self.refused(self.verifier(), hand_made(
            {"typ": "JWT"}, {"sub": "alice"}, SECRET.encode())))

    def test_an_algorithm_not_listed(self):
        self.assertIn("('HS384') is not accepted",
                      self.refused(self.verifier(), token(alg="HS384")))
        # RS256 is listed, but without a public key it is not accepted either.
        self.assertIn("('RS256') is not accepted",
                      self.refused(self.verifier(), token(key=RSA_KEY, alg="RS256")))

    def test_hs256_signed_with_the_public_key_is_refused(self):
        """The classic confusion: the RSA public key (which everyone has) used
        as an HMAC secret.  HS256 is only ever checked with jwt_secret."""
        forged = hand_made({"alg": "HS256", "typ": "JWT"},
                           {"sub": "mallory", "exp": NOW + 60}, pem(RSA_KEY))
        rsa_only = self.verifier(secret="", public_keys=[RSA_KEY.public_key()])
        self.assertIn("('HS256') is not accepted", self.refused(rsa_only, forged))
        both = self.verifier(public_keys=[RSA_KEY.public_key()])
        self.assertEqual(self.refused(both, forged), "bad token signature")

    def test_rs256_and_es256(self):
        v = self.verifier(secret="", public_keys=[RSA_KEY.public_key(), EC_KEY.public_key()])
        self.assertEqual(v.algorithms, ("RS256", "ES256"))
        self.assertEqual(v.verify(token(key=RSA_KEY, alg="RS256"), NOW).user, "alice")
        self.assertEqual(v.verify(token(sub="bob", key=EC_KEY, alg="ES256"), NOW).user, "bob")
        self.assertEqual(self.refused(v, token(key=RSA_KEY_2, alg="RS256")),
                         "bad token signature")
        self.assertIn("('HS256') is not accepted", self.refused(v, token()))

    def test_several_public_keys_for_a_rotation(self):
        v = self.verifier(secret="", public_keys=[RSA_KEY.public_key(),
                                                  RSA_KEY_2.public_key()])
        for key in (RSA_KEY, RSA_KEY_2):
            self.assertEqual(v.verify(token(key=key, alg="RS256"), NOW).user, "alice")

    def test_audience_and_issuer(self):
        v = self.verifier(audience="push", issuer="https://auth.example.com")
        good = dict(aud="push", iss="https://auth.example.com")
        self.assertEqual(v.verify(token(**good), NOW).user, "alice")
        self.assertEqual(v.verify(token(aud=["web", "push"], iss=good["iss"]), NOW).user,
                         "alice")
        self.assertEqual(self.refused(v, token(iss=good["iss"])),
                         "the token has no 'aud' claim")
        self.assertEqual(self.refused(v, token(aud="web", iss=good["iss"])),
                         "the token is not for this server (claim 'aud')")
        self.assertEqual(self.refused(v, token(aud="push", iss="evil")),
                         "the token is not from the expected issuer (claim 'iss')")
        self.assertEqual(self.refused(v, token(aud="push")), "the token has no 'iss' claim")
        # No audience configured: a token meant for some audience is refused.
        self.assertEqual(self.refused(self.verifier(), token(aud="push")),
                         "the token is not for this server (claim 'aud')")

    def test_groups_and_tags_claims(self):
        v = self.verifier(max_groups=2)
        self.assertEqual(self.refused(v, token(groups="lobby")),
                         "the token's claim 'groups' must be a list of names")
        self.assertIn("lists 3 names; at most 2",
                      self.refused(v, token(groups=["a", "b", "c"])))
        self.assertIn("claim 'groups'", self.refused(v, token(groups=["a", ""])))
        self.assertIn("claim 'tags'", self.refused(v, token(tags=[1])))
        self.assertIn(f"at most {MAX_TAGS}",
                      self.refused(v, token(tags=[f"t{i}" for i in range(MAX_TAGS + 1)])))

    def test_malformed_tokens(self):
        v = self.verifier()
        for text in ("abc", "a.b.c", "....", b64(b"[" * 5000) + ".e30.x", "é.é.é"):
            self.assertEqual(self.refused(v, text), "malformed token: not a JSON Web Token")
        nested = hand_made({"alg": "HS256"}, {}, SECRET.encode())
        nested = nested.split(".")
        nested[1] = b64(b'{"sub":"a","x":' + b"[" * 3000 + b"]" * 3000 + b"}")
        head = ".".join(nested[:2]).encode()
        nested[2] = b64(hmac.new(SECRET.encode(), head, hashlib.sha256).digest())
        self.assertEqual(self.refused(v, ".".join(nested)),
                         "malformed token: not a JSON Web Token")
        self.assertIn("longer than", self.refused(v, "x" * 20000))


class KeyFileTests(unittest.TestCase):
    def test_public_keys_and_a_certificate_are_read(self):
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tokens")])
        start = datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc)
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(RSA_KEY_2.public_key()).serial_number(1)
                       .not_valid_before(start)
                       .not_valid_after(start + datetime.timedelta(days=1))
                       .sign(RSA_KEY_2, hashes.SHA256()))
        path = write(self, pem(RSA_KEY) + b"\n" + pem(EC_KEY)
                     + certificate.public_bytes(serialization.Encoding.PEM))
        keys = load_public_keys(path)
        self.assertEqual([k.public_numbers() for k in keys],
                         [RSA_KEY.public_key().public_numbers(),
                          EC_KEY.public_key().public_numbers(),
                          RSA_KEY_2.public_key().public_numbers()])

    def error(self, data: bytes | None) -> str:
        path = self.mktemp() if data is None else write(self, data)
        return str(self.assertRaises(KeyFileError, load_public_keys, path))

    def test_bad_files(self):
        self.assertIn("cannot read", self.error(None))
        self.assertIn("holds no PEM public key", self.error(b"hello"))
        private = RSA_KEY.private_bytes(serialization.Encoding.PEM,
                                        serialization.PrivateFormat.PKCS8,
                                        serialization.NoEncryption())
        self.assertIn("holds a private key", self.error(private))
        self.assertIn("cannot be read",
                      self.error(b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
        small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        self.assertIn("RSA key of 1024 bits", self.error(pem(small)))
        self.assertIn("curve secp256k1", self.error(pem(ec.generate_private_key(ec.SECP256K1()))))
        for message in (self.error(None), self.error(b"hello")):
            self.assertNotIn("\n", message)


class AuthSettingsTests(unittest.TestCase):
    """The [auth] section: defaults, and mistakes stop start-up in one line."""

    def config(self, text: str) -> str:
        return write(self, text.encode())

    def error(self, text: str) -> str:
        e = self.assertRaises(ConfigError, build_settings, self.config(text))
        self.assertNotIn("\n", str(e))
        return str(e)

    def test_defaults(self):
        s = build_settings()
        self.assertEqual((s.auth_mode, s.jwt_secret, s.jwt_public_key_file, s.jwt_algorithms,
                          s.jwt_audience, s.jwt_issuer, s.jwt_require_exp, s.auth_leeway,
                          s.auth_timeout),
                         ("none", "", "", ["HS256", "RS256", "ES256"], "", "", True, 5.0, 10.0))

    def test_a_good_section(self):
        path = write(self, pem(EC_KEY))
        s = build_settings(self.config(
            f'[auth]\nmode = "required"\njwt_public_key_file = "{path}"\n'
            f'jwt_algorithms = ["ES256"]\njwt_audience = "push"\nleeway = 0\ntimeout = 3\n'))
        self.assertEqual((s.auth_mode, s.jwt_algorithms, s.auth_leeway, s.auth_timeout),
                         ("required", ["ES256"], 0.0, 3.0))
        verifier = TokenVerifier.from_settings(s)
        self.assertEqual(verifier.algorithms, ("ES256",))

    def test_mistakes(self):
        key = write(self, pem(RSA_KEY))
        cases = [
            ('mode = "token"',
             "auth.mode: 'token' needs a key: set auth.jwt_secret (HS256) or "
             "auth.jwt_public_key_file (RS256, ES256)"),
            ('mode = "required"', "auth.mode: 'required' needs a key"),
            ('mode = "strict"', "auth.mode: must be one of none, token, required"),
            ('jwt_secret = "short"', "auth.jwt_secret: must be at least 32 bytes long"),
            ('jwt_algorithms = ["none"]', "auth.jwt_algorithms: 'none' (unsigned tokens) is "
                                          "never accepted"),
            ('jwt_algorithms = ["HS1"]', "auth.jwt_algorithms: unknown algorithm 'HS1'"),
            ('jwt_algorithms = []', "auth.jwt_algorithms: must be a non-empty list"),
            (f'jwt_secret = "{SECRET}"\njwt_algorithms = ["RS256"]',
             "auth.jwt_algorithms: lists no HS algorithm (HS256) for auth.jwt_secret"),
            (f'jwt_public_key_file = "{key}"\njwt_algorithms = ["HS256", "ES256"]',
             f"auth.jwt_algorithms: lists no algorithm for the keys in {key}"),
            ('mode = "token"\njwt_public_key_file = "/nonexistent/key.pem"',
             "auth.jwt_public_key_file: cannot read /nonexistent/key.pem: No such file"),
            ('require_exp = "yes"', "auth.require_exp: must be true or false"),
            ('timeout = 0', "auth.timeout: must be at least 0.1 seconds"),
            ('leeway = -1', "auth.leeway: must be at least 0"),
        ]
        for body, expected in cases:
            self.assertTrue(self.error(f"[auth]\n{body}\n").startswith(expected),
                            (body, self.error(f"[auth]\n{body}\n")))


class OpenWarningTests(unittest.TestCase):
    """auth.mode "none" on an address other machines reach warns at start-up."""

    def test_exposed_endpoints(self):
        self.assertEqual(exposed_endpoints([
            "tcp:8080", "tcp:8080:interface=127.0.0.1", "tcp6:80:interface=\\:\\:1",
            "tcp:1:interface=0.0.0.0", "ssl:8443:privateKey=k.pem:interface=localhost",
            "unix:/tmp/p.sock", "systemd:domain=INET:index=0"]),
            ["tcp:8080", "tcp:1:interface=0.0.0.0", "systemd:domain=INET:index=0"])

    def test_warning(self):
        events = []
        log = Logger(observer=events.append)
        self.assertTrue(warn_if_open(settings(), log))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0]["log_level"].name, "warn")
        self.assertIn("SECURITY WARNING", events[0]["log_format"])
        self.assertEqual(events[0]["endpoints"], "tcp:8080:backlog=1024")
        self.assertFalse(warn_if_open(settings(listen=["tcp:0:interface=127.0.0.1"]), log))
        self.assertFalse(warn_if_open(settings(auth_mode="token", jwt_secret=SECRET), log))
        self.assertEqual(len(events), 1)


# Groups without a namespace open to every client, as in the development mode.
OPEN = {"": {"join": "open"}}


class TokenServerTestCase(ServerTestCase):
    """A real server on loopback whose engine runs on a Clock set to NOW."""

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(NOW)

    def start(self, **overrides):
        overrides.setdefault("auth_mode", "token")
        overrides.setdefault("jwt_secret", SECRET)
        # The clock jumps by minutes: keep the liveness checks out of the way.
        overrides.setdefault("ping_interval", 100_000.0)
        overrides.setdefault("ping_timeout", 100_000.0)
        return self.start_server(**overrides)

    async def open(self, query: str = ""):
        c = await connect(self.url + query)
        self.addCleanup(self._close_client, c)
        return c

    def frames(self, c, start: int = 1):
        """(op, code or user, ref) of each frame after the first ``start``."""
        return [(f["op"], f.get("code", f.get("user")), f.get("ref")) for f in c.frames[start:]]


class TokenAuthTests(TokenServerTestCase):

    @run
    async def test_auth_with_a_token_binds_user_groups_and_tags(self):
        self.start()
        c = await self.open()
        reply = await c.request("auth", token=token(groups=["lobby"], tags=["beta"]))
        self.assertEqual(reply, {"op": "ok", "ref": 1})
        self.assertEqual(self.frames(c), [("welcome", "alice", None), ("ok", None, 1)])
        session = self.engine.registry.get(c.session)
        self.assertEqual((session.user, session.groups, session.tags),
                         ("alice", {"lobby"}, {"beta"}))
        ids = [await self.push({"group": "lobby"}, "g"), await self.push({"tag": "beta"}, "t"),
               await self.push({"user": "alice"}, "u")]
        await c.wait_for_messages(3)
        self.assertEqual([(m["id"], m["data"]) for m in c.messages],
                         list(zip(ids, ["g", "t", "u"])))

    @run
    async def test_a_bad_token_is_unauthorized_and_closes_with_1008(self):
        self.start()
        watcher = await self.client()
        for bad, message in [(token(key=OTHER_SECRET), "bad token signature"),
                             (token(exp=NOW - 60), "token expired"),
                             ("not-a-token", "malformed token: not a JSON Web Token")]:
            c = await self.open()
            with self.assertRaises(ServerError) as e:
                await c.request("auth", token=bad)
            self.assertEqual((e.exception.code, e.exception.frame["message"]),
                             ("unauthorized", message))
            self.assertEqual(await c.closed, (1008, message))
        await eventually(lambda: len(self.engine.registry) == 1, what="the refused gone")
        await watcher.barrier()
        self.assertIsNone(watcher.close_code)

    @run
    async def test_a_user_name_alone_is_refused(self):
        self.start()
        c = await self.open()
        with self.assertRaises(ServerError) as e:
            await c.request("auth", user="alice")
        self.assertEqual(e.exception.code, "unauthorized")
        self.assertEqual((await c.closed)[0], 1008)

    @run
    async def test_anonymous_sessions_still_work_in_token_mode(self):
        """Unauthenticated sessions may join what an open namespace allows."""
        self.start(namespaces=OPEN)
        c = await self.open()
        await c.request("join", group="g")
        msg_id = await self.push({"group": "g"}, "hi")
        await c.wait_for_messages(1)
        self.assertEqual(c.messages[0]["id"], msg_id)

    @run
    async def test_development_mode_with_a_secret_checks_tokens_too(self):
        self.start(auth_mode="none")
        a = await self.client(user="alice")               # a user name is trusted
        self.assertEqual(a.user, "alice")
        b = await self.open()
        await b.request("auth", token=token(sub="bob"))
        self.assertEqual(b.user, "bob")
        c = await self.open()
        with self.assertRaises(ServerError):
            await c.request("auth", token=token(key=OTHER_SECRET))
        self.assertEqual((await c.closed)[0], 1008)

    @run
    async def test_too_many_groups_in_the_token(self):
        self.start(max_groups_per_session=2, namespaces=OPEN)
        c = await self.open()
        await c.request("join", group="mine")
        with self.assertRaises(ServerError) as e:
            await c.request("auth", token=token(groups=["a", "b"]))
        self.assertEqual(e.exception.code, "too_many_groups")
        session = self.engine.registry.get(c.session)
        self.assertEqual((session.user, session.groups), (None, {"mine"}))
        await c.request("auth", token=token(groups=["mine", "a"]))
        self.assertEqual(session.groups, {"mine", "a"})

    @run
    async def test_the_hook_runs_after_the_check_with_the_verified_user(self):
        self.start()
        seen = []

        def on_auth(session, api, user, token_text):
            seen.append((user, token_text is not None))
            return "app-" + user
        self.engine.set_app(App("test", SimpleNamespace(on_auth=on_auth)))
        c = await self.open()
        await c.request("auth", token=token(groups=["g"]))
        self.assertEqual((c.user, seen), ("app-alice", [("alice", True)]))
        self.assertEqual(self.engine.registry.get(c.session).groups, {"g"})
        bad = await self.open()
        with self.assertRaises(ServerError):
            await bad.request("auth", token=token(key=OTHER_SECRET))
        self.assertEqual(len(seen), 1)                     # never asked about a bad one


class UrlTokenTests(TokenServerTestCase):

    @run
    async def test_token_on_the_url(self):
        self.start()
        c = await self.open("?token=" + token(groups=["lobby"]))
        await c.wait_until(lambda: c.user == "alice")
        self.assertEqual(self.frames(c, 0), [("welcome", None, None), ("welcome", "alice", None)])
        msg_id = await self.push({"group": "lobby"}, "hi")
        await c.wait_for_messages(1)
        self.assertEqual(c.messages[0]["id"], msg_id)

    @run
    async def test_a_bad_token_on_the_url_closes_with_1008(self):
        self.start()
        c = await self.open("?token=" + token(exp=NOW - 100))
        self.assertEqual(await c.closed, (1008, "token expired"))
        self.assertEqual(self.frames(c, 0), [("welcome", None, None),
                                             ("error", "unauthorized", None)])


class RequiredModeTests(TokenServerTestCase):

    @run
    async def test_ops_before_auth_are_refused_then_the_timeout_closes(self):
        self.start(auth_mode="required", auth_timeout=10.0)
        c = await self.open()
        with self.assertRaises(ServerError) as e:
            await c.request("join", group="g")
        self.assertEqual((e.exception.code, e.exception.frame["message"]),
                         ("unauthorized", "authenticate first: send auth with a token"))
        with self.assertRaises(ServerError):
            await c.request("send", to={"group": "g"}, data=1)
        await c.barrier()                                   # ping is served, still open
        self.assertEqual(self.engine.registry.get(c.session).groups, set())
        self.clock.advance(9)
        await c.barrier()
        self.assertIsNone(c.close_code)
        self.clock.advance(1)
        self.assertEqual(await c.closed, (1008, "not authenticated within 10 seconds"))
        self.assertEqual(self.frames(c)[-1],
                         ("error", "unauthorized", None))

    @run
    async def test_auth_in_time_stops_the_timeout(self):
        self.start(auth_mode="required", auth_timeout=10.0, jwt_require_exp=False,
                   namespaces=OPEN)
        c = await self.open()
        await c.request("auth", token=token(exp=None))
        await c.request("join", group="g")
        self.clock.advance(3600)
        await c.barrier()
        self.assertIsNone(c.close_code)
        self.assertNotIn(self.engine.registry.get(c.session), self.engine.auth.timers)

    @run
    async def test_url_token_in_required_mode(self):
        self.start(auth_mode="required", namespaces=OPEN)
        c = await self.open("?token=" + token())
        await c.request("join", group="g")               # served after the url's auth
        self.assertEqual(c.user, "alice")

    @run
    async def test_a_reload_into_required_mode_times_anonymous_sessions(self):
        self.start(auth_mode="token", auth_timeout=5.0)
        anonymous = await self.open()
        user = await self.open()
        await user.request("auth", token=token(exp=NOW + 3600))
        self.engine.configure(settings(auth_mode="required", jwt_secret=SECRET,
                                       auth_timeout=5.0))
        self.clock.advance(5)
        self.assertEqual((await anonymous.closed)[0], 1008)
        await user.barrier()
        self.assertIsNone(user.close_code)


class ExpiryTests(TokenServerTestCase):

    @run
    async def test_an_expired_token_closes_the_session(self):
        self.start(auth_leeway=5.0)
        c = await self.open()
        await c.request("auth", token=token(exp=NOW + 60))
        self.clock.advance(64)                             # exp + leeway not reached
        await c.barrier()
        self.assertIsNone(c.close_code)
        self.clock.advance(1)
        self.assertEqual(await c.closed, (1008, "token expired"))
        self.assertEqual(self.frames(c)[-1], ("error", "unauthorized", None))

    @run
    async def test_a_fresh_token_extends_the_session(self):
        self.start(auth_leeway=0.0)
        c = await self.open()
        await c.request("auth", token=token(exp=NOW + 60, groups=["a"]))
        self.clock.advance(50)
        await c.request("auth", token=token(exp=NOW + 120, groups=["b"]))
        self.assertEqual(self.frames(c)[-2:], [("welcome", "alice", None), ("ok", None, 2)])
        self.clock.advance(30)                             # past the first exp
        await c.barrier()
        self.assertIsNone(c.close_code)
        self.assertEqual(self.engine.registry.get(c.session).groups, {"a", "b"})
        self.clock.advance(40)                             # past the second
        self.assertEqual(await c.closed, (1008, "token expired"))
        await self.all_closed()

    @run
    async def test_a_fresh_token_for_another_user_is_forbidden(self):
        self.start(auth_leeway=0.0)
        c = await self.open()
        await c.request("auth", token=token(exp=NOW + 60))
        with self.assertRaises(ServerError) as e:
            await c.request("auth", token=token(sub="bob", exp=NOW + 600))
        self.assertEqual(e.exception.code, "forbidden")
        self.clock.advance(60)                            # the first token's expiry holds
        self.assertEqual(await c.closed, (1008, "token expired"))

    @run
    async def test_closing_cancels_the_timer(self):
        self.start()
        c = await self.open()
        await c.request("auth", token=token(exp=NOW + 60))
        timer = self.engine.auth.timers[self.engine.registry.get(c.session)]
        self.assertTrue(timer.active())
        await c.disconnect()
        await self.all_closed()
        self.assertFalse(timer.active())
        self.assertNotIn(timer, self.clock.getDelayedCalls())

    async def all_closed(self):
        await eventually(lambda: len(self.engine.registry) == 0, what="the session gone")


class StartupWarningTests(ChildTestCase):

    @run
    async def test_twistd_warns_on_every_interface_without_auth(self):
        port = free_port()
        child = self.spawn("twistd", "--workers", "0", "--admin", "", "--port", str(port))
        await self.wait_serving(child, port)
        self.assertIn("SECURITY WARNING: client authentication is off", child.output())
        self.assertIn(f"listens on tcp:{port}", child.output())
