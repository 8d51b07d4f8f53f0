"""The web role as a service: tcp and ssl listen endpoints; /metrics exposition."""
import datetime
import os
import re
import tempfile

import treq
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from twisted.internet import defer, reactor, ssl
from twisted.trial import unittest
from twisted.web.client import Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
import ipaddress

from minard.services import web
from minard.web.site import AddressLimit
from tests.support import RedisTestMixin, free_port, wait_for
from tests.web_support import PROGRAMS, SiteTestMixin


def self_signed(directory):
    """A key and certificate for localhost / 127.0.0.1, written as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = os.path.join(directory, "key.pem"), os.path.join(directory, "cert.pem")
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    with open(cert_path, "wb") as f:
        f.write(cert_pem)
    return key_path, cert_path, cert_pem


class ServiceTests(RedisTestMixin, unittest.TestCase):

    def options(self, listen):
        return {"redis": self.redis_server.url, "listen": listen, "log-dir": tempfile.mkdtemp(),
                "programs": PROGRAMS, "config-sections": {}, "role": "web"}

    def start(self, listen):
        service = web.make_service(self.options(listen), reactor)
        service.startService()
        self.addCleanup(service.redis.disconnect)
        self.addCleanup(service.stopService)
        self.addCleanup(service.redis.ping)  # runs first: never disconnect mid-SELECT
        return service

    @defer.inlineCallbacks
    def test_tcp(self):
        port = free_port()
        self.start("tcp:%d:interface=127.0.0.1" % port)
        resp = yield treq.get("http://127.0.0.1:%d/get_alarm" % port,
                              pool=HTTPConnectionPool(reactor, persistent=False))
        self.assertEqual(resp.code, 200)
        body = yield resp.json()
        self.assertEqual(body, {"alarms": [], "latest": -1})

    @defer.inlineCallbacks
    def test_ssl_with_certificate_and_key(self):
        directory = tempfile.mkdtemp()
        key_path, cert_path, cert_pem = self_signed(directory)
        port = free_port()
        service = self.start("ssl:%d:privateKey=%s:certKey=%s:interface=127.0.0.1"
                         % (port, key_path, cert_path))
        trust = ssl.Certificate.loadPEM(cert_pem)
        agent = Agent(reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust),
                      pool=HTTPConnectionPool(reactor, persistent=False))
        client = treq.client.HTTPClient(agent)
        resp = yield client.get("https://localhost:%d/snostream" % port)
        self.assertEqual(resp.code, 200)
        body = yield resp.text()
        self.assertIn("SNO+", body)
        self.assertEqual(resp.headers.getRawHeaders("x-content-type-options"), ["nosniff"])
        # and the SSE stream works over TLS too
        self.sync.command("SET", "dispatcher", "tls-host")
        resp = yield client.get("https://localhost:%d/stream" % port)
        self.assertEqual(resp.headers.getRawHeaders("content-type")[0],
                         "text/event-stream; charset=utf-8")
        chunks = []
        done = resp.collect(chunks.append)
        yield wait_for(lambda: b"tls-host" in b"".join(chunks), timeout=10)
        yield service.stopService()  # ends every stream
        yield done

    @defer.inlineCallbacks
    def test_connections_over_the_cap_are_aborted_under_tls_too(self):
        directory = tempfile.mkdtemp()
        key_path, cert_path, cert_pem = self_signed(directory)
        port = free_port()
        service = self.start("ssl:%d:privateKey=%s:certKey=%s:interface=127.0.0.1"
                             % (port, key_path, cert_path))
        # every peer counted as an outside address here (tests talk to 127.0.0.1 only)
        service.factory.connections = AddressLimit(10, 1, 2, "connections",
                                                   loopback=lambda host: False)
        trust = ssl.Certificate.loadPEM(cert_pem)
        kept = HTTPConnectionPool(reactor, persistent=True)
        self.addCleanup(kept.closeCachedConnections)
        first = treq.client.HTTPClient(Agent(
            reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust), pool=kept))
        second = treq.client.HTTPClient(Agent(
            reactor, contextFactory=BrowserLikePolicyForHTTPS(trustRoot=trust),
            pool=HTTPConnectionPool(reactor, persistent=False)))
        resp = yield first.get("https://localhost:%d/get_alarm" % port)  # kept open
        self.assertEqual(resp.code, 200)
        yield resp.content()
        with self.assertRaises(Exception):  # aborted before the handshake
            yield second.get("https://localhost:%d/get_alarm" % port)
        self.assertEqual(service.site.stats.counters["connections_refused"], 1)
        resp = yield first.get("https://localhost:%d/get_status?name=builder" % port)
        self.assertEqual(resp.code, 200)
        yield resp.content()


PROM_LINE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                       r'[-+]?([0-9.]+([eE][-+]?[0-9]+)?|NaN|[+-]Inf)$')


class MetricsTests(SiteTestMixin, unittest.TestCase):

    def parse(self, text):
        samples = {}
        for line in text.splitlines():
            if line.startswith("#"):
                self.assertRegex(line, r"^# (TYPE|HELP) [a-zA-Z_:][a-zA-Z0-9_:]* ")
                continue
            self.assertRegex(line, PROM_LINE)
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
        return samples

    @defer.inlineCallbacks
    def test_metrics(self):
        now = self.now
        self.sync.command("HSET", "minard:stats:dispatch-pull-0", "records", "1234",
                          "flush_ms", "2.5", "updated", str(now - 1), "bad", "text")
        self.sync.command("HSET", 'minard:stats:old"one', "records", "5", "updated", str(now - 60))
        self.sync.command("SET", "heartbeat:builder", "ok")
        self.sync.command("SET", "ts:1:%d:heartbeat" % (int(now) - 3), "1")
        code, headers, body = yield self.get("metrics")
        self.assertEqual(code, 200)
        self.assertTrue(headers.getRawHeaders("content-type")[0].startswith("text/plain; version=0.0.4"))
        samples = self.parse(body.decode())
        self.assertEqual(samples['minard_records{process="dispatch-pull-0"}'], 1234)
        self.assertEqual(samples['minard_flush_ms{process="dispatch-pull-0"}'], 2.5)
        self.assertEqual(samples['minard_records{process="old\\"one"}'], 5)
        self.assertEqual(samples['minard_process_up{process="dispatch-pull-0"}'], 1)
        self.assertEqual(samples['minard_process_up{process="old\\"one"}'], 0)
        self.assertEqual(samples['minard_program_up{program="builder"}'], 1)
        self.assertEqual(samples['minard_program_up{program="xl3"}'], 0)
        self.assertEqual(samples["minard_pull_heartbeat_age_seconds"], 2)
        self.assertEqual(samples["minard_redis_up"], 1)
        self.assertNotIn("minard_bad", body.decode())
        # every family's samples are together, after its TYPE line
        families = [l.split()[2] for l in body.decode().splitlines() if l.startswith("# TYPE")]
        self.assertEqual(len(families), len(set(families)))
