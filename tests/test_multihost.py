"""Beyond one server (issue 14 item 4): three "hosts" as network namespaces joined by
veth pairs, all made (and removed) by this test, with real processes:

  host A  dispatch-push, data-producer, the simulator's data server, the Redis primary,
          a web on the primary
  host B  two dispatch-pull workers and two data consumers (allowed CURVE keys), an
          intruding pull worker (a key not allowed), a worker with a wrong Redis password
  host C  web on a Redis replica, a web with a wrong Redis password

Every ZeroMQ link across hosts is CURVE, every Redis connection TLS with its role's ACL
user. The test's independent dispatcher reaches host A through a unix socket (files are
shared by all namespaces), and so do the test's reads: no address outside the
namespaces is used. Checked: exact per-second counts from workers on host B, nothing for
the intruder (refused and counted), the wrong password refused and counted, no record
bytes or passwords in a capture of host B's wire, the replica's web answering the same
JSON as the primary's, and no ACL denial of anything a role does.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

from twisted.internet import defer, reactor
from twisted.trial import unittest

from minard import curve
from minard.store import acl
from tests.support import REPO, RoleProcess, SyncRedis, free_port, wait_for
from tests.test_faults import PREFIX, EventPool, Feeder, sleep
from tests.test_pipeline import TestDispatcherFactory
from tests.test_redis_full import info as _info
from tests.test_redis_tls import make_pki

#: The test's private addresses: A-B on NET_AB, A-C on NET_AC (/30 each).
NET_AB = ("10.231.1.1", "10.231.1.2")
NET_AC = ("10.231.2.1", "10.231.2.2")


def run(*argv):
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def namespaces_unavailable():
    """None when network namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs as root)"
    if shutil.which("ip") is None:
        return "the ip command (iproute2) is not installed"
    name = "mnprobe%d" % os.getpid()
    p = run("ip", "netns", "add", name)
    if p.returncode != 0:
        return "cannot make a network namespace here: %s" % p.stderr.strip()
    run("ip", "netns", "del", name)
    return None


class Hosts:
    """Namespaces A, B, C; veth A<->B and A<->C with NET_AB / NET_AC."""

    def __init__(self):
        tag = "%d" % (os.getpid() % 100000)
        self.ns = {h: "mn%s%s" % (h, tag) for h in "ABC"}
        self.veth = {"AB": "mv%sab" % tag, "BA": "mv%sba" % tag,
                     "AC": "mv%sac" % tag, "CA": "mv%sca" % tag}

    def sh(self, *argv):
        p = run(*argv)
        if p.returncode != 0:
            raise RuntimeError("%s: %s" % (" ".join(argv), p.stderr.strip()))

    def up(self):
        for ns in self.ns.values():
            self.sh("ip", "netns", "add", ns)
            self.sh("ip", "-n", ns, "link", "set", "lo", "up")
        for (a, b), (addr_a, addr_b) in ((("A", "B"), NET_AB), (("A", "C"), NET_AC)):
            va, vb = self.veth[a + b], self.veth[b + a]
            self.sh("ip", "link", "add", va, "netns", self.ns[a], "type", "veth", "peer",
                    "name", vb, "netns", self.ns[b])
            self.sh("ip", "-n", self.ns[a], "addr", "add", addr_a + "/30", "dev", va)
            self.sh("ip", "-n", self.ns[b], "addr", "add", addr_b + "/30", "dev", vb)
            self.sh("ip", "-n", self.ns[a], "link", "set", va, "up")
            self.sh("ip", "-n", self.ns[b], "link", "set", vb, "up")

    def down(self):
        for ns in self.ns.values():
            run("ip", "netns", "del", ns)  # removes its veth ends too

    def prefix(self, host):
        return ["ip", "netns", "exec", self.ns[host]]

    def popen(self, host, *argv, **kwargs):
        env = dict(os.environ, PYTHONPATH=REPO)
        return subprocess.Popen(self.prefix(host) + list(argv), cwd=REPO, env=env, **kwargs)


def python_tool(hosts, host, *args):
    p = hosts.popen(host, sys.executable, "-m", "tests.netns_tools", *args,
                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    if line.strip() != "ready":
        p.kill()
        raise RuntimeError("%s did not start: %s" % (args, p.stderr.read()))
    return p


class MultiHostTests(unittest.TestCase):
    timeout = 420

    primary = None

    def setUp(self):
        why = namespaces_unavailable()
        if why:
            raise unittest.SkipTest(why)
        self.dir = tempfile.mkdtemp(prefix="minard-hosts-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.children = []
        self.addCleanup(self._stop_children)
        self.hosts = Hosts()
        self.addCleanup(self.hosts.down)
        self.hosts.up()

    def _stop_children(self):
        for p in reversed(self.children):
            if isinstance(p, RoleProcess):
                p.stop()
            elif p.poll() is None:
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def path(self, name):
        return os.path.join(self.dir, name)

    def child(self, p):
        self.children.append(p)
        return p

    def role(self, host, role, *args):
        p = RoleProcess(role, *args, directory=self.dir, prefix=self.hosts.prefix(host))
        return self.child(p.start())

    def redis(self, host, name, *args):
        d = self.path(name)
        os.mkdir(d)
        p = self.hosts.popen(host, shutil.which("redis-server") or "/usr/bin/redis-server",
                             "--dir", d, "--save", "", "--appendonly", "no",
                             "--loglevel", "warning", "--logfile", self.path(name + ".log"),
                             "--unixsocket", self.path(name + ".sock"),
                             "--unixsocketperm", "700", *args,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.child(p)
        return SyncRedis(None, unix=self.path(name + ".sock"), password=self.admin)

    def logs(self, *names):
        out = []
        for name in names:
            try:
                with open(self.path(name + ".log"), errors="replace") as f:
                    out.append("%s: %s" % (name, f.read()[-2000:]))
            except OSError:
                out.append("%s: no log" % name)
        return "\n".join(out)

    def fetch_json(self, sock, path):
        """GET path from a web listening inside a namespace, through its unix relay."""
        import http.client
        import socket as socketlib

        class UnixHTTP(http.client.HTTPConnection):
            def connect(self):
                self.sock = socketlib.socket(socketlib.AF_UNIX)
                self.sock.settimeout(10)
                self.sock.connect(sock)

        c = UnixHTTP("localhost")
        c.request("GET", path, headers={"Accept": "application/json"})
        r = c.getresponse()
        body = r.read()
        c.close()
        return r.status, json.loads(body) if body else None

    def diagnostics(self):
        out = []
        for p in self.children:
            if isinstance(p, RoleProcess):
                out.append("--- %s %s (alive %s):\n%s" % (p.role, " ".join(p.args[-6:]),
                                                        p.alive(), p.log()[-1500:]))
        try:
            denied = {}
            for e in self.primary.command("ACL", "LOG"):
                e = _acl_entry(e)
                what = (e.get("username"), e.get("reason"), e.get("context"), e.get("object"))
                denied[what] = denied.get(what, 0) + int(e.get("count", 1))
            out.append("--- ACL LOG: %r" % (denied,))
        except Exception as e:
            out.append("--- ACL LOG unavailable: %s" % e)
        return "\n".join(out)

    @defer.inlineCallbacks
    def test_workers_and_web_on_other_hosts(self):
        try:
            yield self.workers_and_web_on_other_hosts()
        except Exception:
            import traceback
            raise AssertionError("%s\n%s" % (traceback.format_exc(), self.diagnostics()))

    @defer.inlineCallbacks
    def workers_and_web_on_other_hosts(self):
        # -- keys, certificates, Redis users ------------------------------------------
        keys = self.path("keys")
        curve.make_keys(keys, ["push", "producer", "pull-b", "consumer-b", "intruder"])
        allowed_push, allowed_producer = self.path("allowed-push"), self.path("allowed-prod")
        os.mkdir(allowed_push)
        os.mkdir(allowed_producer)
        shutil.copy(os.path.join(keys, "pull-b.key"), allowed_push)
        shutil.copy(os.path.join(keys, "consumer-b.key"), allowed_producer)
        pki = make_pki(self.dir, server_names=("127.0.0.1", NET_AB[0], NET_AC[0]))
        passwords = acl.new_passwords()
        self.admin = "admin-" + passwords["web"][:8]
        with open(self.path("users.acl"), "w") as f:
            f.write(acl.acl_file(passwords, default_password=self.admin))
        tls = ["--tls-cert-file", pki["server.crt"], "--tls-key-file", pki["server.key"],
               "--tls-ca-cert-file", pki["ca"], "--tls-auth-clients", "no",
               "--aclfile", self.path("users.acl")]
        redis_port, replica_port = 16379, 16380  # each in its own namespace: free there
        primary = self.redis("A", "primary", "--port", "0", "--tls-port", str(redis_port),
                             "--bind", "127.0.0.1", NET_AB[0], NET_AC[0], *tls)
        self.primary = primary
        replica = self.redis("C", "replica", "--port", "0", "--tls-port", str(replica_port),
                             "--bind", "127.0.0.1", "--tls-replication", "yes",
                             "--replicaof", NET_AC[0], str(redis_port),
                             "--masteruser", acl.REPLICA_USER,
                             "--masterauth", passwords[acl.REPLICA_USER], *tls)
        try:
            yield wait_for(lambda: _answers(primary) and _answers(replica), timeout=15)
        except AssertionError:
            raise AssertionError("Redis did not start: %s" % self.logs("primary", "replica"))

        def url(role, host, port=redis_port, password=None):
            return acl.role_url(role, password or passwords[role], host, port,
                                tls="ca=" + pki["ca"])

        # -- the test's dispatcher, reached from host A through a unix socket ----------
        factory = TestDispatcherFactory(PREFIX)
        listening = reactor.listenUNIX(self.path("dispatcher.sock"), factory)
        self.addCleanup(listening.stopListening)
        dispatcher_port = 15000
        self.child(python_tool(self.hosts, "A", "relay", "tcp-to-unix", str(dispatcher_port),
                               self.path("dispatcher.sock")))
        # a capture of everything on host B's wire
        capture_file = self.path("wire-b.bin")
        self.child(python_tool(self.hosts, "B", "capture", self.hosts.veth["BA"], capture_file))

        # -- the roles ------------------------------------------------------------------
        events = "tcp://%s:5560" % NET_AB[0]
        cmos, base = "tcp://%s:5557" % NET_AB[0], "tcp://%s:5558" % NET_AB[0]
        key = lambda n: os.path.join(keys, n)  # noqa: E731
        self.role("A", "simulator", "--dispatcher-listen", "tcp:15001:interface=127.0.0.1",
                  "--data-listen", "tcp:15002:interface=127.0.0.1", "--rate", "10")
        self.role("A", "data-producer", "--redis", url("data-producer", "127.0.0.1"),
                  "--port", "15002", "--cmos-zmq", cmos, "--base-zmq", base,
                  "--curve-secret", key("producer.key_secret"),
                  "--curve-allowed", allowed_producer)
        push = self.role("A", "dispatch-push", "--redis", url("dispatch-push", "127.0.0.1"),
                         "--port", str(dispatcher_port), "--zmq", events,
                         "--curve-secret", key("push.key_secret"),
                         "--curve-allowed", allowed_push)
        pulls = [self.role("B", "dispatch-pull", "--redis", url("dispatch-pull", NET_AB[0]),
                           "--zmq", events, "--name", "pull-b%d" % i,
                           "--curve-secret", key("pull-b.key_secret"),
                           "--curve-server-key", key("push.key")) for i in range(2)]
        intruder = self.role("B", "dispatch-pull", "--redis", url("dispatch-pull", NET_AB[0]),
                             "--zmq", events, "--name", "intruder",
                             "--curve-secret", key("intruder.key_secret"),
                             "--curve-server-key", key("push.key"))
        # a web on host C with a wrong Redis password (a worker would take its share of
        # the events and lose them: refused by Redis, it cannot write them)
        self.role("C", "web", "--redis", url("web", NET_AC[0], password="wrong-password"),
                  "--listen", "tcp:18081", "--programs",
                  os.path.join(REPO, "etc", "programs.ini"), "--log-dir", self.dir)
        for kind_url in (cmos, base):
            self.role("B", "data-consumer", "--redis", url("data-consumer", NET_AB[0]),
                      "--zmq", kind_url, "--curve-secret", key("consumer-b.key_secret"),
                      "--curve-server-key", key("producer.key"))
        self.role("A", "web", "--redis", url("web", "127.0.0.1"), "--listen", "tcp:18080",
                  "--programs", os.path.join(REPO, "etc", "programs.ini"),
                  "--log-dir", self.dir)
        self.role("C", "web", "--redis", url("web", NET_AC[0]),
                  "--redis-replica", url("web", "127.0.0.1", port=replica_port),
                  "--listen", "tcp:18080", "--programs", os.path.join(REPO, "etc", "programs.ini"),
                  "--log-dir", self.dir)
        for host in "AC":
            self.child(python_tool(self.hosts, host, "relay", "unix-to-tcp",
                                   self.path("web-%s.sock" % host), "18080"))

        # (twelve processes start at once: on a loaded 2-core machine that takes a while)
        yield wait_for(lambda: factory.connections, timeout=90)
        yield wait_for(lambda: all(primary.command("EXISTS", "minard:stats:pull-b%d" % i)
                                   for i in range(2)), timeout=60)
        yield wait_for(lambda: primary.command("EXISTS", "minard:stats:intruder"), timeout=60)
        yield sleep(1.0)  # the PULL sockets' CURVE handshakes are done

        # -- events from the test's dispatcher: exact on host B ---------------------------
        feeder = Feeder(factory, EventPool(7))
        yield feeder.run(6.0)
        seconds = sorted(feeder.sent)

        def stored():
            return {s: int(primary.command("HGET", "ts:1:%d:trig" % s, "TOTAL") or 0)
                    for s in seconds}
        expected = {s: feeder.sent[s][0] for s in seconds}
        try:
            yield wait_for(lambda: stored() == expected, timeout=30)
        except AssertionError:
            pass
        self.assertEqual(stored(), expected, "per-second TOTAL from the workers on host B")
        for s in seconds:
            nhit = int(primary.command("HGET", "ts:1:%d:trig:nhit" % s, "TOTAL") or 0)
            self.assertEqual(nhit, feeder.sent[s][1], "nhit sum of second %d" % s)
        def worker_events():  # the stats hashes are published once a second
            return sum(float(primary.hgetall("minard:stats:pull-b%d" % i).get("events", 0))
                       for i in range(2))
        try:
            yield wait_for(lambda: worker_events() == feeder.total(), timeout=10)
        except AssertionError:
            pass
        self.assertEqual(worker_events(), feeder.total())

        # -- the intruder got nothing; it was refused and counted --------------------------
        self.assertEqual(float(primary.hgetall("minard:stats:intruder").get("events", 0)), 0)
        refused = lambda: float(primary.hgetall(  # noqa: E731
            "minard:stats:dispatch-push").get("curve_refused", 0))
        yield wait_for(lambda: refused() > 0, timeout=15)
        self.assertIn("refused", push.log())
        # -- the wrong Redis password: refused by Redis, counted there ----------------------
        # (Redis 7.0 counts them in ACL LOG; the process logs each refusal, retrying)
        auth_refused = lambda: sum(  # noqa: E731
            int(_acl_entry(e).get("count", 0)) for e in primary.command("ACL", "LOG")
            if _acl_entry(e).get("reason") == "auth" and _acl_entry(e).get("username") == "web")
        yield wait_for(lambda: auth_refused() > 0, timeout=15)

        # -- consumers on host B finalise CMOS rates and base currents ---------------------
        yield wait_for(lambda: primary.command("KEYS", "minard:chan:cmos:*") and
                       primary.command("KEYS", "minard:chan:base:*"), timeout=60)

        # -- the wire of host B: no record bytes, no Redis password -------------------------
        with open(capture_file, "rb") as f:
            wire = f.read()
        self.assertGreater(len(wire), 100000, "the capture saw the traffic")
        pool = EventPool(7)
        for frame in pool.frames[:50]:
            record = frame[PREFIX:]
            self.assertNotIn(record[12:60], wire, "plain record bytes on the wire")
        for role in ("dispatch-pull", "data-consumer"):
            self.assertNotIn(passwords[role].encode(), wire, "a password on the wire")
        self.assertNotIn(b"HINCRBY", wire)

        # -- web on the replica answers the same JSON as on the primary --------------------
        start, stop = seconds[0] - 2, seconds[-1] + 2
        query = "/metric?expr=TOTAL&start=%d&stop=%d&step=1" % (start, stop)
        status_a, on_primary = self.fetch_json(self.path("web-A.sock"), query)
        self.assertEqual(status_a, 200, on_primary)
        yield wait_for(lambda: self.fetch_json(self.path("web-C.sock"), query)[1] == on_primary,
                       timeout=20)
        self.assertEqual(sum(v for v in on_primary["values"] if v), feeder.total())

        # -- least privilege: no role was denied anything it does; the web user cannot
        # write ts:*, the log-server user neither, a worker cannot reconfigure Redis
        log = primary.command("ACL", "LOG")
        denied = [_acl_entry(e) for e in log if _acl_entry(e).get("reason") != "auth"
                  or _acl_entry(e).get("username") != "web"]
        self.assertEqual(denied, [], "ACL denials of minard's own roles")
        for role, command in (("web", ("SET", "ts:1:1:trig", "x")),
                              ("log-server", ("HSET", "ts:1:1:trig", "TOTAL", "1")),
                              ("dispatch-pull", ("CONFIG", "SET", "maxmemory", "1")),
                              ("web", ("FLUSHALL",))):
            as_role = SyncRedis(None, unix=primary.unix, user=role, password=passwords[role])
            with self.assertRaises(Exception, msg="%s may %s" % (role, command[0])) as e:
                as_role.command(*command)
            self.assertIn("NOPERM", str(e.exception))


def _answers(sync):
    try:
        return sync.command("PING") == "PONG"
    except Exception:
        return False


def _acl_entry(entry):
    return dict(zip(entry[::2], entry[1::2]))
