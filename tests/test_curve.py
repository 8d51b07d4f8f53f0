"""ZeroMQ CURVE on minard's links (issue 14 item 1): key pairs from minard-keys, only the
allowed keys get data, a refused peer is counted, the bytes on the wire are not the
records, and a plain-text link beyond loopback is refused unless forced."""
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading

from twisted.internet import defer, reactor, task
from twisted.trial import unittest

from minard import curve, tap, zmqlink
from minard.stats import Stats
from tests.support import REPO, free_port, wait_for
from tests.test_tap import run_twistd


def make_keys(directory, *names):
    curve.make_keys(directory, names)
    return {n: (os.path.join(directory, n + ".key"), os.path.join(directory, n + ".key_secret"))
            for n in names}


class Relay:
    """A TCP relay 127.0.0.1:port -> 127.0.0.1:target that keeps every byte it passes
    (what a packet capture on the wire would see)."""

    def __init__(self, target):
        self.target = target
        self.seen = bytearray()
        self.lock = threading.Lock()
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(4)
        self.port = self.server.getsockname()[1]
        self.sockets = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.server.accept()
            except OSError:
                return
            b = socket.create_connection(("127.0.0.1", self.target))
            self.sockets += [a, b]
            for x, y in ((a, b), (b, a)):
                threading.Thread(target=self._pipe, args=(x, y), daemon=True).start()

    def _pipe(self, src, dst):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                return
            if not data:
                try:
                    dst.shutdown(socket.SHUT_WR)
                except OSError:
                    pass
                return
            with self.lock:
                self.seen += data
            try:
                dst.sendall(data)
            except OSError:
                return

    def close(self):
        for s in self.sockets:
            try:
                s.close()
            except OSError:
                pass


class LoopbackTests(unittest.TestCase):
    def test_loopback_endpoints(self):
        for e in ("tcp://127.0.0.1:5560", "tcp://127.3.4.5:1", "tcp://localhost:5560",
                  "tcp://[::1]:5560", "ipc:///tmp/x", "inproc://x"):
            self.assertTrue(curve.is_loopback(e), e)
        for e in ("tcp://*:5560", "tcp://0.0.0.0:5560", "tcp://10.0.0.2:5560",
                  "tcp://daq1.snolab.ca:5560", "tcp://[::]:5560"):
            self.assertFalse(curve.is_loopback(e), e)

    def test_plaintext_beyond_loopback_is_refused_unless_forced(self):
        opts = {"curve-secret": None, "curve-allowed": None, "plaintext-beyond-loopback": False}
        self.assertIsNone(curve.server_keys(opts, ["tcp://127.0.0.1:5560"]))
        with self.assertRaises(tap.OptionError) as e:
            curve.server_keys(opts, ["tcp://*:5560"])
        self.assertIn("minard-keys", str(e.exception))
        with self.assertRaises(tap.OptionError):
            curve.client_keys({"plaintext-beyond-loopback": False}, ["tcp://10.0.0.1:5560"])
        opts["plaintext-beyond-loopback"] = True
        self.assertIsNone(curve.server_keys(opts, ["tcp://*:5560"]))

    def test_keys_go_together(self):
        d = tempfile.mkdtemp()
        keys = make_keys(d, "push")
        with self.assertRaises(tap.OptionError):
            curve.server_keys({"curve-secret": keys["push"][1]}, ["tcp://*:1"])
        with self.assertRaises(tap.OptionError):
            curve.client_keys({"curve-server-key": keys["push"][0]}, ["tcp://*:1"])
        # a public key given where the secret one is needed
        with self.assertRaises(tap.OptionError) as e:
            curve.server_keys({"curve-secret": keys["push"][0], "curve-allowed": d}, [])
        self.assertIn("no secret key", str(e.exception))
        empty = tempfile.mkdtemp()
        with self.assertRaises(tap.OptionError) as e:
            curve.server_keys({"curve-secret": keys["push"][1], "curve-allowed": empty}, [])
        self.assertIn("no public key files", str(e.exception))

    def test_role_refuses_plaintext_beyond_loopback_in_one_line(self):
        port = free_port()
        code, out, err = run_twistd("-n", "--pidfile=", "minard", "--role=dispatch-push",
                                    "--zmq", "tcp://0.0.0.0:%d" % port)
        self.assertEqual(code, 1, err)
        lines = [line for line in err.splitlines() if line.strip()]
        self.assertEqual(len(lines), 1, err)
        self.assertIn("beyond loopback", lines[0])
        self.assertNotIn("Traceback", err + out)
        code, out, err = run_twistd("-n", "--pidfile=", "minard", "--role=dispatch-pull",
                                    "--plaintext-beyond-loopback", "maybe")
        self.assertEqual(code, 1)
        self.assertIn("must be yes or no", err)


class KeysCommandTests(unittest.TestCase):
    def run_keys(self, *args):
        env = dict(os.environ, PYTHONPATH=REPO)
        return subprocess.run([sys.executable, "-c", "import sys; from minard.curve import "
                               "main; sys.exit(main())"] + list(args), env=env,
                              capture_output=True, text=True, timeout=30)

    def test_makes_pairs_with_private_secret_and_refuses_to_overwrite(self):
        d = os.path.join(tempfile.mkdtemp(), "keys")
        p = self.run_keys(d, "dispatch-push", "pull-host-b")
        self.assertEqual(p.returncode, 0, p.stderr)
        for name in ("dispatch-push", "pull-host-b"):
            public, secret = os.path.join(d, name + ".key"), os.path.join(d, name + ".key_secret")
            self.assertEqual(stat.S_IMODE(os.stat(secret).st_mode), 0o600)
            pub, sec = __import__("zmq.auth").auth.load_certificate(secret)
            self.assertEqual(len(pub), 40)
            self.assertEqual(len(sec), 40)
            self.assertEqual(__import__("zmq.auth").auth.load_certificate(public)[1], None)
        before = open(os.path.join(d, "pull-host-b.key_secret"), "rb").read()
        p = self.run_keys(d, "pull-host-b")
        self.assertEqual(p.returncode, 1)
        self.assertIn("exists already", p.stderr)
        self.assertEqual(open(os.path.join(d, "pull-host-b.key_secret"), "rb").read(), before)
        p = self.run_keys(d)
        self.assertEqual(p.returncode, 2)
        self.assertEqual(len(p.stderr.strip().splitlines()), 1)
        p = self.run_keys(d, "../escape")
        self.assertEqual(p.returncode, 2)


class CurveLinkTests(unittest.TestCase):
    """Real libzmq sockets on loopback TCP, through a relay that sees the wire bytes."""

    timeout = 60
    MARKER = b"RAWDATA-PLAIN-RECORD-" * 8

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        keys = make_keys(self.dir, "push", "good-worker", "bad-worker")
        self.allowed = os.path.join(self.dir, "allowed")
        os.mkdir(self.allowed)
        os.link(keys["good-worker"][0], os.path.join(self.allowed, "good-worker.key"))
        self.keys = keys
        self.links = []

    def tearDown(self):
        for link in self.links:
            link.shutdown()
        curve.stop_authenticators()

    def link(self, link):
        self.links.append(link)
        return link

    @defer.inlineCallbacks
    def send_until(self, push, received, count=20):
        """Send `count` messages, retrying on the high-water mark, then wait for them."""
        sent = 0
        for _ in range(200):
            while sent < count and push.send([zmqlink.stamp(sent), self.MARKER, b"%d" % sent]):
                sent += 1
            if sent >= count:
                break
            yield task.deferLater(reactor, 0.05, lambda: None)  # let the links connect
        try:
            yield wait_for(lambda: len(received) >= count, timeout=10)
        except AssertionError:
            pass

    @defer.inlineCallbacks
    def test_only_allowed_key_gets_records_and_wire_shows_no_record_bytes(self):
        port = free_port()
        stats = Stats("dispatch-push")
        server = curve.ServerKeys.load(self.keys["push"][1], self.allowed)
        curve.start_authenticator(zmqlink.factory().context, server,
                                  curve.RefusalCounter(stats, reactor, "dispatch-push"))
        push = self.link(zmqlink.PushLink("tcp://127.0.0.1:%d" % port, keys=server))
        relay = Relay(port)
        self.addCleanup(relay.close)
        bad = curve.ClientKeys.load(self.keys["bad-worker"][1], self.keys["push"][0])
        bad_received = []
        self.link(zmqlink.PullLink("tcp://127.0.0.1:%d" % port, bad_received.append, keys=bad))
        yield wait_for(lambda: stats.counters.get("curve_refused", 0) > 0, timeout=10)
        good = curve.ClientKeys.load(self.keys["good-worker"][1], self.keys["push"][0])
        received = []
        self.link(zmqlink.PullLink("tcp://127.0.0.1:%d" % relay.port, received.append,
                                   keys=good))
        yield self.send_until(push, received)
        self.assertEqual(len(received), 20)
        self.assertEqual(received[0][1], self.MARKER)
        self.assertEqual(bad_received, [])
        self.assertGreater(len(relay.seen), 20 * len(self.MARKER))
        self.assertNotIn(b"RAWDATA-PLAIN-RECORD", bytes(relay.seen))

    @defer.inlineCallbacks
    def test_the_relay_does_see_plain_text_links(self):
        """The check above can fail: without CURVE the records are on the wire."""
        port = free_port()
        push = self.link(zmqlink.PushLink("tcp://127.0.0.1:%d" % port))
        relay = Relay(port)
        self.addCleanup(relay.close)
        received = []
        self.link(zmqlink.PullLink("tcp://127.0.0.1:%d" % relay.port, received.append))
        yield self.send_until(push, received)
        self.assertEqual(len(received), 20)
        self.assertIn(b"RAWDATA-PLAIN-RECORD", bytes(relay.seen))

    @defer.inlineCallbacks
    def test_plain_client_of_a_curve_server_gets_nothing(self):
        port = free_port()
        server = curve.ServerKeys.load(self.keys["push"][1], self.allowed)
        curve.start_authenticator(zmqlink.factory().context, server,
                                  curve.RefusalCounter(None, reactor, "dispatch-push"))
        push = self.link(zmqlink.PushLink("tcp://127.0.0.1:%d" % port, keys=server))
        plain = []
        self.link(zmqlink.PullLink("tcp://127.0.0.1:%d" % port, plain.append))
        good = curve.ClientKeys.load(self.keys["good-worker"][1], self.keys["push"][0])
        received = []
        self.link(zmqlink.PullLink("tcp://127.0.0.1:%d" % port, received.append, keys=good))
        yield self.send_until(push, received)
        self.assertEqual(len(received), 20)
        self.assertEqual(plain, [])
