"""Redis across hosts (issue 14 item 2): rediss:// URLs (TLS, the server's certificate
checked against a CA file and the URL's host, optional client certificates) and ACL
users (redis://user:password@...), through minard's own connect()."""
import datetime
import os
import tempfile

from twisted.internet import defer
from twisted.trial import unittest

import txredisapi

from minard.store.connection import connect
from tests.support import RedisServer, free_port


def write_pem(path, data):
    with open(path, "wb") as f:
        f.write(data)
    return path


def make_pki(directory, server_names=("127.0.0.1",)):
    """A CA, a server certificate for server_names and a client certificate, as PEM
    files in directory: {'ca', 'server.crt', 'server.key', 'client.crt', 'client.key',
    'other-ca'}."""
    import ipaddress
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, subject_key, issuer, issuer_key, ca=False, sans=()):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
             .public_key(subject_key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            alt = []
            for s in sans:
                try:
                    alt.append(x509.IPAddress(ipaddress.ip_address(s)))
                except ValueError:
                    alt.append(x509.DNSName(s))
            b = b.add_extension(x509.SubjectAlternativeName(alt), critical=False)
        return b.sign(issuer_key, hashes.SHA256())

    def pem_key(k):
        return k.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())

    def pem_cert(c):
        return c.public_bytes(serialization.Encoding.PEM)

    ca_key, other_key, server_key, client_key = key(), key(), key(), key()
    ca = cert("minard test CA", ca_key, "minard test CA", ca_key, ca=True)
    other = cert("another CA", other_key, "another CA", other_key, ca=True)
    server = cert(server_names[0], server_key, "minard test CA", ca_key, sans=server_names)
    client = cert("dispatch-pull", client_key, "minard test CA", ca_key)
    j = lambda n: os.path.join(directory, n)  # noqa: E731
    return {
        "ca": write_pem(j("ca.crt"), pem_cert(ca)),
        "other-ca": write_pem(j("other-ca.crt"), pem_cert(other)),
        "server.crt": write_pem(j("server.crt"), pem_cert(server)),
        "server.key": write_pem(j("server.key"), pem_key(server_key)),
        "client.crt": write_pem(j("client.crt"), pem_cert(client)),
        "client.key": write_pem(j("client.key"), pem_key(client_key)),
    }


class TLSTests(unittest.TestCase):
    timeout = 60

    def start(self, auth_clients):
        self.pki = make_pki(tempfile.mkdtemp())
        self.tls_port = free_port()
        self.redis = RedisServer(extra_args=[
            "--tls-port", str(self.tls_port), "--tls-cert-file", self.pki["server.crt"],
            "--tls-key-file", self.pki["server.key"], "--tls-ca-cert-file", self.pki["ca"],
            "--tls-auth-clients", auth_clients])
        self.redis.start()
        self.addCleanup(self.redis.cleanup)

    def url(self, host="127.0.0.1", **params):
        query = "&".join("%s=%s" % kv for kv in params.items())
        return "rediss://%s:%d/0%s" % (host, self.tls_port, "?" + query if query else "")

    @defer.inlineCallbacks
    def roundtrip(self, url):
        redis = connect(url, connect_wait=3.0)
        self.addCleanup(redis.disconnect)
        yield redis.set("minard:tls-check", "over TLS")
        value = yield redis.get("minard:tls-check")
        return value

    @defer.inlineCallbacks
    def refused(self, url):
        redis = connect(url, connect_wait=2.0)
        self.addCleanup(redis.disconnect)
        # the handshake fails: the command fails (RedisUnavailable, or the connection
        # lost while it waited for the handshake), and it never reached Redis
        with self.assertRaises(txredisapi.ConnectionError):
            yield redis.set("minard:refused", "sent anyway")
        self.assertIsNone(self.redis.command("GET", "minard:refused"))

    @defer.inlineCallbacks
    def test_server_certificate_checked(self):
        self.start("no")
        self.assertEqual((yield self.roundtrip(self.url(ca=self.pki["ca"]))), "over TLS")
        # a certificate not signed by the CA given: no connection, nothing sent
        yield self.refused(self.url(ca=self.pki["other-ca"]))
        # a certificate that does not name the host of the URL
        yield self.refused(self.url(host="localhost", ca=self.pki["ca"]))

    @defer.inlineCallbacks
    def test_client_certificate_when_redis_requires_one(self):
        self.start("yes")
        yield self.refused(self.url(ca=self.pki["ca"]))
        value = yield self.roundtrip(self.url(ca=self.pki["ca"], cert=self.pki["client.crt"],
                                              key=self.pki["client.key"]))
        self.assertEqual(value, "over TLS")


class ACLUserTests(unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def test_named_user_authenticates(self):
        redis = RedisServer().start()
        self.addCleanup(redis.cleanup)
        redis.command("ACL", "SETUSER", "reader", "on", ">s3cret", "~minard:*", "+get",
                      "+ping", "+select")
        redis.command("SET", "minard:x", "1")
        client = connect("redis://reader:s3cret@127.0.0.1:%d/0" % redis.port)
        self.addCleanup(client.disconnect)
        self.assertEqual((yield client.get("minard:x")), "1")
        with self.assertRaises(Exception) as e:
            yield client.set("minard:x", "2")
        self.assertIn("NOPERM", str(e.exception))
        from minard.stats import Stats
        from tests.support import wait_for
        stats = Stats("web")
        wrong = connect("redis://reader:wrong@127.0.0.1:%d/0" % redis.port, connect_wait=1.0,
                        stats=stats)
        self.addCleanup(wrong.disconnect)
        with self.assertRaises(Exception):
            yield wrong.get("minard:x")
        yield wait_for(lambda: stats.counters.get("redis_auth_refused", 0) > 0, timeout=5)
