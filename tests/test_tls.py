"""TLS on ssl: endpoints: wss:// and https:// with --workers 0, with the worker
pool, and certificate renewal by reload; every key and certificate is a
throwaway one made here."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import replace

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import reactor
from twisted.internet.ssl import Certificate, optionsForClientTLS
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool

from pushsvc.client import ConnectionClosed, PushClient, connect
from pushsvc.pool.master import Master, RestartFailed
from pushsvc.server import PushServer
from pushsvc.tls import TLSError
from tests.helpers import ChildTestCase, ServerTestCase, eventually, free_port, run, settings


def make_certificate(directory: str, name: str) -> tuple[str, str, int]:
    """A fresh EC key and a self-signed certificate for 127.0.0.1 and localhost,
    written as ``key.pem`` and ``cert.pem`` in ``directory`` (replacing what is
    there); (key path, certificate path, serial)."""
    os.makedirs(directory, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    serial = x509.random_serial_number()
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(serial)
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path = os.path.join(directory, "key.pem")
    cert_path = os.path.join(directory, "cert.pem")
    write(key_path, key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path, serial


def write(path: str, data: bytes) -> None:
    """Replace ``path`` at once (as a certificate renewal tool does)."""
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


def peer_serial(client) -> int:
    return client.transport.getPeerCertificate().get_serial_number()


class TLSTestCase(ServerTestCase):
    """Clients and HTTP over TLS, trusting only the certificates made here."""

    def setUp(self):
        self.certs = os.path.abspath(self.mktemp())
        self.key, self.cert, self.serial = make_certificate(self.certs, "pushsvc test 1")
        self.trusted = []
        self.trust(self.cert)

    def description(self, port: int = 0) -> str:
        return (f"ssl:{port}:privateKey={self.key}:certKey={self.cert}"
                f":interface=127.0.0.1")

    def trust(self, cert_path: str) -> None:
        """Trust the certificate now in ``cert_path`` too (a client trusts one
        root: the newest, so each test trusts the certificate it expects)."""
        with open(cert_path, "rb") as f:
            root = Certificate.loadPEM(f.read())
        self.trusted.append(root)
        self.client_tls = optionsForClientTLS("127.0.0.1", trustRoot=root)
        http_pool = HTTPConnectionPool(reactor, persistent=True)
        http_pool.maxPersistentPerHost = 1
        self.addCleanup(http_pool.closeCachedConnections)
        self.agent = Agent(reactor, BrowserLikePolicyForHTTPS(trustRoot=root), pool=http_pool)

    def use_port(self, port: int) -> None:
        self.port = port
        self.url = f"wss://127.0.0.1:{port}/ws"
        self.base = f"https://127.0.0.1:{port}"

    def renew(self, name: str) -> int:
        """A new key and certificate in the same files; its serial."""
        _, _, serial = make_certificate(self.certs, name)
        return serial

    async def check_served(self, clients) -> None:
        """A push over https:// reaches every client over wss://."""
        counts = [len(c.messages) for c in clients]
        sent = await self.push({"all": True}, "hello")
        for c, count in zip(clients, counts):
            messages = await c.wait_for_messages(count + 1)
            self.assertEqual((messages[-1]["id"], messages[-1]["data"]), (sent, "hello"))


class OneProcessTests(TLSTestCase):
    """--workers 0: PushServer.listen on an ssl: endpoint."""

    def start_tls_server(self, **overrides) -> PushServer:
        self.server = PushServer(settings(**overrides), reactor)
        listener = self.server.listen(reactor, self.description())
        self.server.startService()
        self.addCleanup(self.server.stopService)
        self.use_port(listener._waitingForPort.result.getHost().port)
        return self.server

    @run
    async def test_wss_and_https(self):
        self.start_tls_server()
        c = await self.client(user="u1")
        self.assertEqual(peer_serial(c), self.serial)
        self.assertEqual(c.frames[0]["op"], "welcome")
        status, body = await self.http("GET", "/healthz")
        self.assertEqual(status, 200, body)
        await self.check_served([c])

    @run
    async def test_an_untrusted_client_is_refused(self):
        self.start_tls_server()
        other = os.path.abspath(self.mktemp())
        _, stranger, _ = make_certificate(other, "someone else")
        with open(stranger, "rb") as f:
            options = optionsForClientTLS("127.0.0.1",
                                          trustRoot=Certificate.loadPEM(f.read()))
        with self.assertRaises(ConnectionClosed) as caught:
            await connect(self.url, tls=options)
        self.assertIn("certificate verify failed", caught.exception.reason)
        c = await self.client()  # the server still serves the ones that trust it
        self.assertEqual(peer_serial(c), self.serial)

    @run
    async def test_the_reconnecting_client_says_why_tls_failed(self):
        """An untrusted certificate is named, with the way to trust it, not a bare 1006."""
        self.start_tls_server()
        states = []
        lost = PushClient(self.url, user="u1", min_delay=60)
        lost.on("state", states.append)
        lost.on("error", lambda error: None)
        lost.start().addErrback(lambda failure: None)  # stopped before it is ready
        await eventually(lambda: any(s["state"] == "waiting" for s in states))
        await lost.stop()
        waiting = next(s for s in states if s["state"] == "waiting")
        self.assertEqual(waiting["code"], 1006)
        self.assertIn("TLS: certificate verify failed", waiting["reason"])
        self.assertIn("SSL_CERT_FILE", waiting["reason"])
        trusting = PushClient(self.url, user="u1", tls=self.client_tls)
        await trusting.start()
        self.assertEqual(trusting.state, "ready")
        await trusting.stop()

    @run
    async def test_reload_renews_the_certificate_for_new_connections(self):
        server = self.start_tls_server()
        old = await self.client(user="u1")
        serial = self.renew("pushsvc test 2")
        self.assertIsNone(server.reload(server.settings))
        self.trust(self.cert)
        new = await self.client(user="u2")
        self.assertEqual(peer_serial(new), serial)
        self.assertEqual(peer_serial(old), self.serial)  # kept its session and TLS
        await self.check_served([old, new])

    @run
    async def test_a_reload_with_a_bad_certificate_changes_nothing(self):
        server = self.start_tls_server()
        old = await self.client()
        before = server.settings
        changed = replace(before, ping_interval=before.ping_interval + 1)

        write(self.cert, b"-----BEGIN CERTIFICATE-----\nnot one\n-----END CERTIFICATE-----\n")
        error = server.reload(changed)
        self.assertIn("TLS: ssl:0:", error)
        self.assertIn("not a usable PEM key or certificate", error)
        self.assertIs(server.settings, before)  # the settings did not change either

        os.remove(self.cert)
        self.assertIn("No such file", server.reload(changed))

        other = os.path.abspath(self.mktemp())
        _, foreign, _ = make_certificate(other, "another key's certificate")
        with open(foreign, "rb") as f:
            write(self.cert, f.read())  # a certificate that does not match the key
        self.assertIn("keys do not match", server.reload(changed))
        self.assertIs(server.settings, before)

        new = await self.client()
        self.assertEqual(peer_serial(new), self.serial)
        await self.check_served([old, new])

    def test_a_listener_with_unusable_files_is_refused(self):
        server = PushServer(settings(), reactor)
        with self.assertRaises(TLSError):
            server.listen(reactor, f"ssl:0:privateKey={self.key}:certKey=missing.pem")


class PoolTests(TLSTestCase):
    """The master binds the ssl: endpoint as TCP; each worker does the TLS."""

    async def start_pool(self, count: int = 2) -> Master:
        self.master = Master(replace(settings(), listen=[self.description()], workers=count),
                             reactor, count)
        self.master.startService()
        self.addCleanup(self.master.stopService)
        self.use_port(self.master.sockets.address().port)
        await eventually(lambda: len(self.master.pool.ready) == count, 20, "workers ready")
        return self.master

    async def spread_clients(self, n: int) -> dict[str, list]:
        """``n`` clients; worker (from the session id) -> its clients, both workers used."""
        by_worker: dict[str, list] = {}
        for _ in range(n):
            c = await self.client()
            by_worker.setdefault(c.session.split(".")[1], []).append(c)
        self.assertEqual(len(by_worker), 2, {k: len(v) for k, v in by_worker.items()})
        return by_worker

    @run
    async def test_both_workers_serve_tls(self):
        master = await self.start_pool(2)
        self.assertEqual(master.sockets.tls, [self.description()])
        self.assertEqual(len(master.sockets.ports[0]), 2)  # a socket per worker
        by_worker = await self.spread_clients(30)
        clients = [c for cs in by_worker.values() for c in cs]
        self.assertTrue(all(peer_serial(c) == self.serial for c in clients))
        await self.check_served(clients)

    @run
    async def test_reload_renews_the_certificate_in_every_worker(self):
        master = await self.start_pool(2)
        old = [cs[0] for cs in (await self.spread_clients(20)).values()]

        serial = self.renew("pushsvc test 2")
        answers = await master.pool.reload(master.pool.settings)
        self.assertEqual([(a["worker"], a["ok"]) for a in answers], [(0, True), (1, True)])
        self.trust(self.cert)
        new = [cs[0] for cs in (await self.spread_clients(20)).values()]
        self.assertEqual([peer_serial(c) for c in new], [serial, serial])
        self.assertEqual([peer_serial(c) for c in old], [self.serial, self.serial])
        await self.check_served(old + new)

        # A broken certificate: every worker says why, and keeps the last good one.
        with open(self.cert, "rb") as f:
            good = f.read()
        write(self.cert, good[: len(good) // 2])
        answers = await master.pool.reload(master.pool.settings)
        self.assertEqual([(a["worker"], a["ok"]) for a in answers], [(0, False), (1, False)])
        for answer in answers:
            self.assertIn("TLS: ssl:0:", answer["error"])
        later = [cs[0] for cs in (await self.spread_clients(20)).values()]
        self.assertEqual([peer_serial(c) for c in later], [serial, serial])
        await self.check_served(old + new + later)

    @run
    async def test_a_new_worker_on_broken_files_leaves_the_old_one_serving(self):
        master = await self.start_pool(2)
        c = await self.client()
        write(self.cert, b"not a certificate")
        with self.assertRaises(RestartFailed) as caught:
            await master.pool.restart_workers()
        self.assertIn("cannot serve TLS", str(caught.exception))
        self.assertIn("the old workers keep serving", str(caught.exception))
        # The failed replacement's end gives the slot back to the old worker;
        # nothing is respawned.
        await eventually(lambda: len(master.pool.live) == 2, what="the replacement gone")
        self.assertEqual(master.pool.ready, {0, 1})
        self.assertFalse(any(call.func == master.pool._respawn
                             for call in reactor.getDelayedCalls()))
        new = await self.client()
        self.assertEqual(peer_serial(new), self.serial)
        await self.check_served([c, new])


class TwistdTests(TLSTestCase, ChildTestCase):
    """The real ``twistd -n pushsvc`` with a pool on an ssl: endpoint."""

    def setUp(self):
        ChildTestCase.setUp(self)
        TLSTestCase.setUp(self)

    @run
    async def test_twistd_pool_serves_wss_and_renews_on_sighup(self):
        port = free_port()
        child = self.spawn("twistd", "--workers", "2", "--listen", self.description(port),
                           "--admin", "")
        await self.wait_serving(child, port, workers=2)
        # Both workers up before the renewal: one that started after it would
        # read the new files at start and have nothing to renew.
        await eventually(lambda: child.output().count(" ready (pid ") >= 2, 20,
                         "both workers ready")
        old = await self.client(user="u1")
        self.assertEqual(peer_serial(old), self.serial)
        await self.check_served([old])

        serial = self.renew("pushsvc test 2")
        self.trust(self.cert)
        child.transport.signalProcess("HUP")
        await eventually(lambda: child.output().count("new connections get the "
                                                      "certificate") >= 2,
                         15, "both workers renewed")
        new = await self.client(user="u2")
        self.assertEqual(peer_serial(new), serial)
        await self.check_served([old, new])
