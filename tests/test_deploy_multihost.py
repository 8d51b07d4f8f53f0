"""The multi-host layout (minard/deploy/multihost.py, `minard-deploy multi-host`): the push
host A, a worker host B and the web host C, rendered from real inputs (CURVE keys made by
minard-keys, a CA and host certificates, the files of a minard-redis-acl run).

Checked: each host's files hold what its programs need and nothing of the other hosts
(no other host's passwords or secret keys); supervisord parses each host's file and runs
exactly its programs; every rendered minard.ini passes the role option parser with each
host's files installed by its own install.sh into a root of its own (the key files load,
the CURVE keys of the two ends match, the [monitor] section makes a poster); the rendered
Redis primary starts (TLS, ACL file), the rendered replica replicates it, and each role's
URL logs in; nginx -t accepts the web host's file (plain and HTTPS server); plain text
beyond loopback and inconsistent inputs are refused with the reason; adding a worker host
leaves the other hosts' files as they were.
"""
import atexit
import dataclasses
import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from io import StringIO

from twisted.trial import unittest

from minard import curve, deploy, tap
from minard.deploy import multihost
from minard.store import acl
from minard.store.connection import parse_redis_url
from tests.support import REPO, SyncRedis, free_port
from tests.test_deploy import nginx_test, parse_supervisord, poll

REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
TWISTD = os.path.join(os.path.dirname(sys.executable), "twistd")

#: Addresses of the CLI renders (never bound) and of the hosts whose files are installed
#: and run here (loopback addresses: Redis binds them on this machine).
NET = {"A": "10.0.0.1", "B": "10.0.0.2", "C": "10.0.0.3", "D": "10.0.0.4"}
LOOP = {"A": "127.0.0.2", "B": "127.0.0.3", "C": "127.0.0.4"}


def make_host_certs(directory, hosts, ca_name="minard test CA"):
    """A CA (ca.crt) and NAME.crt / NAME.key for each NAME -> address of `hosts`, the
    certificate naming the address (subjectAltName IP), in `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    os.makedirs(directory, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def build(subject, key, sans=(), ca=False):
        b = (x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(ca_name))
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(s)) for s in sans]), critical=False)
        return b.sign(ca_key, hashes.SHA256())

    def write(filename, data):
        with open(os.path.join(directory, filename), "wb") as f:
            f.write(data)

    write("ca.crt", build(ca_name, ca_key, ca=True).public_bytes(serialization.Encoding.PEM))
    for host, address in hosts.items():
        key = ec.generate_private_key(ec.SECP256R1())
        write(host + ".crt", build(host, key, sans=[address]).public_bytes(
            serialization.Encoding.PEM))
        write(host + ".key", key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
    return directory


def redis_acl(directory, host, ca=None):
    """The two files of a real `minard-redis-acl` run: (acl file, urls file)."""
    os.makedirs(directory, exist_ok=True)
    files = (os.path.join(directory, "users.acl"), os.path.join(directory, "urls.ini"))
    argv = ["--acl-file", files[0], "--urls", files[1], "--host", host]
    if ca:
        argv += ["--ca", ca]
    with redirect_stdout(StringIO()):
        assert acl.main(argv) == 0
    return files


def rooted(root, ports):
    """PRODUCTION with every file of the host under `root` (the code is this checkout)."""
    p = deploy.PRODUCTION

    def r(path):
        return root + path

    return dataclasses.replace(
        p, ports=ports, repo=REPO, twistd=TWISTD, etc=r(p.etc), log_dir=r(p.log_dir),
        daq_log_dir=r(p.daq_log_dir), programs=r(p.programs), redis_dir=r(p.redis_dir),
        redis_pidfile=r(p.redis_pidfile), redis_logfile=r(p.redis_logfile),
        supervisord_pidfile=r(p.supervisord_pidfile), nginx_pidfile=r(p.nginx_pidfile),
        nginx_error_log=r(p.nginx_error_log), nginx_access_log=r(p.nginx_access_log),
        tls_dir=r(p.tls_dir), redis_acl_file=r(p.redis_acl_file), redis_conf=r(p.redis_conf),
        nginx_conf=r(p.nginx_conf))


def cli(argv):
    """(exit code, stdout, stderr) of `minard-deploy ARGV`."""
    out, err = StringIO(), StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = deploy.main(argv, prog="minard-deploy")
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def role_config(path, role):
    """The role's section of a minard.ini, checked for unknown keys."""
    return tap.read_config(path, role, {n for n, *_ in tap.COMMON + tap.ROLES[role]})


def read(path, mode="r"):
    with open(path, mode) as f:
        return f.read()


def tree(directory):
    """{path relative to directory: bytes} of every file under it."""
    out = {}
    for base, _dirs, files in os.walk(directory):
        for name in files:
            path = os.path.join(base, name)
            out[os.path.relpath(path, directory)] = read(path, "rb")
    return out


def secret_key(path):
    import zmq.auth
    return zmq.auth.load_certificate(path)[1]


def public_key(path):
    import zmq.auth
    return zmq.auth.load_certificate(path)[0]


class Inputs:
    """Keys, certificates and Redis users, made once for the module."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="minard-multihost-")
        atexit.register(shutil.rmtree, self.dir, True)
        self.keys = os.path.join(self.dir, "keys")
        with redirect_stdout(StringIO()):
            assert curve.main([self.keys, "dispatch-push", "data-producer", "B", "D"]) == 0
        self.tls = make_host_certs(os.path.join(self.dir, "tls"),
                                   {"A": NET["A"], "C": NET["C"]})
        self.acl, self.urls = redis_acl(os.path.join(self.dir, "acl"), NET["A"],
                                        ca=os.path.join(self.tls, "ca.crt"))
        self.users, self.replica_password = multihost.read_redis_urls(self.urls)
        self.admin = parse_redis_url_unchecked(self.urls, "admin")
        self.count = 0

    def out(self):
        self.count += 1
        return os.path.join(self.dir, "out-%d" % self.count)

    def argv(self, out, hosts="A,B,C", addresses=NET, keys=True, tls=True, extra=()):
        argv = ["multi-host", "--out", out,
                "--hosts", ",".join("%s=%s" % (h, addresses[h]) for h in hosts.split(",")),
                "--push-host", "A", "--web-host", "C", "--workers", "3",
                "--redis-urls", self.urls, "--redis-acl", self.acl]
        if keys:
            argv += ["--keys", self.keys]
        if tls:
            argv += ["--tls", self.tls]
        return argv + list(extra)


def parse_redis_url_unchecked(urls_file, section):
    """The password of a section's URL in the URLs file (its ca= file may be elsewhere)."""
    from urllib.parse import urlsplit
    from minard.programs import read_ini
    return urlsplit(read_ini(urls_file).get(section, "redis")).password


_inputs = None


def inputs():
    global _inputs
    if _inputs is None:
        _inputs = Inputs()
    return _inputs


class MultiHostFilesTests(unittest.TestCase):
    """`minard-deploy multi-host` with the production paths: what each host gets."""

    def setUp(self):
        self.inputs = inputs()
        self.out = self.inputs.out()
        code, self.stdout, err = cli(self.inputs.argv(self.out))
        self.assertEqual(code, 0, err)
        self.files = {h: tree(os.path.join(self.out, h)) for h in "ABC"}

    def text(self, host, path):
        return self.files[host]["root" + path].decode("utf-8")

    def test_each_host_gets_its_files(self):
        def targets(host):
            return sorted("/" + p[len("root/"):] for p in self.files[host] if p != "install.sh")

        self.assertEqual(targets("A"), sorted([
            "/etc/minard/minard.ini", "/etc/minard/supervisord.conf",
            "/etc/minard/curve/dispatch-push.key_secret",
            "/etc/minard/curve/data-producer.key_secret", "/etc/minard/curve/workers/B.key",
            "/etc/redis/redis.conf", "/etc/redis/minard-users.acl",
            "/etc/ssl/minard/ca.crt", "/etc/ssl/minard/A.crt", "/etc/ssl/minard/A.key"]))
        self.assertEqual(targets("B"), sorted([
            "/etc/minard/minard.ini", "/etc/minard/supervisord.conf",
            "/etc/minard/curve/B.key_secret", "/etc/minard/curve/dispatch-push.key",
            "/etc/minard/curve/data-producer.key", "/etc/ssl/minard/ca.crt"]))
        self.assertEqual(targets("C"), sorted([
            "/etc/minard/minard.ini", "/etc/minard/supervisord.conf",
            "/etc/minard/programs.ini", "/etc/nginx/nginx.conf", "/etc/redis/redis.conf",
            "/etc/redis/minard-users.acl", "/etc/ssl/minard/ca.crt", "/etc/ssl/minard/C.crt",
            "/etc/ssl/minard/C.key"]))
        for host in "ABC":
            self.assertIn("%s (%s): %s/%s" % (host, NET[host], self.out, host), self.stdout)
            for path in self.files[host]:  # passwords and secret keys: private to root
                mode = os.stat(os.path.join(self.out, host, path)).st_mode & 0o777
                self.assertEqual(mode, 0o700 if path == "install.sh" else 0o600, path)
        # the copies are the inputs
        k = self.inputs.keys
        self.assertEqual(self.files["B"]["root/etc/minard/curve/B.key_secret"],
                         read(os.path.join(k, "B.key_secret"), "rb"))
        self.assertEqual(self.files["A"]["root/etc/redis/minard-users.acl"],
                         read(self.inputs.acl, "rb"))

    def test_nothing_of_another_host(self):
        """A host holds the passwords of its own roles only, and the secret keys of its own
        links only; the administrator's password is nowhere."""
        users = self.inputs.users
        k = self.inputs.keys
        tls = self.inputs.tls
        mine = {"A": {"dispatch-push", "data-producer"},
                "B": {"dispatch-pull", "data-consumer"},
                "C": {"web", "log-server"}}
        secrets = {"dispatch-push": secret_key(os.path.join(k, "dispatch-push.key_secret")),
                   "data-producer": secret_key(os.path.join(k, "data-producer.key_secret")),
                   "B": secret_key(os.path.join(k, "B.key_secret"))}
        my_secrets = {"A": {"dispatch-push", "data-producer"}, "B": {"B"}, "C": set()}
        tls_keys = {h: read(os.path.join(tls, h + ".key"), "rb") for h in "AC"}
        for host in "ABC":
            blob = b"\n".join(self.files[host].values())
            for role, user in users.items():
                self.assertEqual(user.password.encode() in blob, role in mine[host],
                                 "password of %s on host %s" % (role, host))
            self.assertEqual(self.inputs.replica_password.encode() in blob, host == "C")
            self.assertNotIn(self.inputs.admin.encode(), blob)
            for name, secret in secrets.items():
                self.assertEqual(secret in blob, name in my_secrets[host],
                                 "secret key %s on host %s" % (name, host))
            for name, pem in tls_keys.items():
                self.assertEqual(pem in blob, name == host, "TLS key %s on %s" % (name, host))
        # the worker host knows the push host's address, not the web host's Redis
        self.assertNotIn("nginx", self.files["B"])
        self.assertNotIn(NET["B"], self.text("A", "/etc/minard/minard.ini"))

    def test_programs_of_each_host(self):
        parsed = {}
        for host in "ABC":
            conf = os.path.join(self.out, host, "root/etc/minard/supervisord.conf")
            parsed[host] = parse_supervisord(conf, users=["minard"],
                                             dirs=["/var/log/minard", "/run", "/opt/minard"])
            # (the password include is made on each host by hand, README.md)
            self.assertEqual(parsed[host]["warnings"], [
                'No file matches via include "/etc/minard/supervisord-auth.conf"'], host)

        def names(host):
            out = set()
            for group, config in parsed[host]["groups"].items():
                for p in config["processes"]:
                    out.add(p["name"] if group == p["name"] else "%s:%s" % (group, p["name"]))
            return out

        self.assertEqual(names("A"), {"minard:dispatch-push", "minard:data-producer",
                                      "simulator"})
        self.assertEqual(names("B"), {"minard:dispatch-pull-B-%d" % i for i in range(3)} |
                         {"minard:data-consumer-%s-B-%d" % (k, i) for k in ("cmos", "base")
                          for i in range(2)})
        self.assertEqual(names("C"), {"minard:web", "minard:log-server"})
        layout = multihost.from_arguments(deploy.cli.build_parser().parse_args(
            self.inputs.argv(self.inputs.out())))
        for host in layout.hosts():
            self.assertEqual(names(host.name), set(layout.process_names(host)))
        self.assertEqual([p["autostart"] for p in parsed["A"]["groups"]["simulator"]
                          ["processes"]], [False])
        for p in parsed["B"]["groups"]["minard"]["processes"]:
            self.assertEqual(p["uid"], 4242)
            self.assertEqual(p["stdout_logfile"], "/var/log/minard/%s.log" % p["name"])
            if p["name"].startswith("dispatch-pull"):
                self.assertTrue(p["command"].endswith("--name " + p["name"]), p["command"])
            else:
                port = 5557 if "-cmos-" in p["name"] else 5558
                self.assertTrue(p["command"].endswith("--zmq tcp://%s:%d" % (NET["A"], port)),
                                p["command"])
        # the web host's programs.ini: the DAQ programs as they were, and every minard
        # process of the layout under its host
        from minard.programs import load_programs
        path = os.path.join(self.out, "C", "root/etc/minard/programs.ini")
        programs = load_programs(path)
        source = load_programs(os.path.join(REPO, "etc", "programs.ini"))
        daq = [n for n in source if n not in deploy.own_programs(deploy.PRODUCTION)]
        self.assertEqual([n for n in programs if n in daq], daq)
        for name in daq:
            self.assertEqual(programs[name], source[name])
        heartbeats = {n: h.name for h, ns in layout.heartbeat_names().items() for n in ns}
        self.assertEqual(set(programs) - set(daq), set(heartbeats))
        for name, host in heartbeats.items():
            self.assertEqual(programs[name].machine, host)
        self.assertNotIn("dispatch-pull-0", programs)

    def test_what_each_configuration_says(self):
        a, c = NET["A"], NET["C"]
        users = self.inputs.users
        ini_a = self.text("A", "/etc/minard/minard.ini")
        self.assertIn("\nzmq = tcp://%s:5560\n" % a, ini_a)
        self.assertIn("\ncmos-zmq = tcp://%s:5557\nbase-zmq = tcp://%s:5558\n" % (a, a), ini_a)
        self.assertIn("\ncurve-allowed = /etc/minard/curve/workers\n", ini_a)
        self.assertIn("\nredis = rediss://dispatch-push:%s@%s:6379/0?ca=/etc/ssl/minard/ca.crt\n"
                      % (users["dispatch-push"].password, a), ini_a)
        self.assertIn("\nurl = https://%s:%d/monitoring\n" % (c, deploy.NGINX_TLS_PORT), ini_a)
        self.assertNotIn("[web]", ini_a)
        self.assertNotIn("plaintext-beyond-loopback", ini_a)
        ini_b = self.text("B", "/etc/minard/minard.ini")
        self.assertIn("\ncurve-server-key = /etc/minard/curve/dispatch-push.key\n", ini_b)
        self.assertIn("\ncurve-server-key = /etc/minard/curve/data-producer.key\n", ini_b)
        self.assertIn("\ncurve-secret = /etc/minard/curve/B.key_secret\n", ini_b)
        ini_c = self.text("C", "/etc/minard/minard.ini")
        self.assertIn("\nredis-replica = redis://web:%s@127.0.0.1:6379/0\n"
                      % users["web"].password, ini_c)
        self.assertIn("\nurl = http://127.0.0.1:8081\n", ini_c)
        for section in ("[watchdog]", "[health]", "[log-server]"):
            self.assertIn(section, ini_c)
            self.assertNotIn(section, ini_a + ini_b)
        primary = self.text("A", "/etc/redis/redis.conf")
        for line in ("port 0", "tls-port 6379", "bind 127.0.0.1 -::1 %s" % a,
                     "tls-cert-file /etc/ssl/minard/A.crt", "tls-auth-clients no",
                     "aclfile /etc/redis/minard-users.acl", "maxmemory-policy noeviction"):
            self.assertIn("\n%s\n" % line, primary)
        self.assertNotIn("replicaof", primary)
        replica = self.text("C", "/etc/redis/redis.conf")
        for line in ("port 6379", "bind 127.0.0.1 -::1", "replicaof %s 6379" % a,
                     "masteruser replica", "masterauth " + self.inputs.replica_password,
                     "tls-replication yes", "tls-cert-file /etc/ssl/minard/C.crt",
                     "aclfile /etc/redis/minard-users.acl", "replica-read-only yes"):
            self.assertIn("\n%s\n" % line, replica)
        self.assertNotIn("tls-port", replica)
        nginx = self.text("C", "/etc/nginx/nginx.conf")
        self.assertIn("listen %d ssl;" % deploy.NGINX_TLS_PORT, nginx)
        self.assertIn("ssl_certificate /etc/ssl/minard/C.crt;", nginx)
        self.assertEqual(nginx.count("location = /monitoring/heartbeat {"), 2)

    def test_plain_text_beyond_loopback_is_refused_unless_forced(self):
        for keys, tls, missing in ((False, True, "--keys (ZeroMQ CURVE)"),
                                   (True, False, "--tls (Redis TLS)")):
            out = self.inputs.out()
            code, _o, err = cli(self.inputs.argv(out, keys=keys, tls=tls))
            self.assertEqual(code, 1)
            self.assertIn("A (10.0.0.1), B (10.0.0.2), C (10.0.0.3) beyond loopback", err)
            self.assertIn("without " + missing, err)
            self.assertIn("--plaintext-beyond-loopback", err)
            self.assertFalse(os.path.exists(out))
        out = self.inputs.out()
        code, stdout, err = cli(self.inputs.argv(out, keys=False, tls=False,
                                                 extra=["--plaintext-beyond-loopback"]))
        self.assertEqual(code, 0, err)
        self.assertIn("WARNING: plain text beyond loopback (no CURVE keys, no TLS)", stdout)
        ini_a = read(os.path.join(out, "A/root/etc/minard/minard.ini"))
        ini_b = read(os.path.join(out, "B/root/etc/minard/minard.ini"))
        self.assertEqual(ini_a.count("\nplaintext-beyond-loopback = yes\n"), 2)
        self.assertEqual(ini_b.count("\nplaintext-beyond-loopback = yes\n"), 2)
        self.assertNotIn("curve-", ini_a + ini_b)
        self.assertIn("\nredis = redis://dispatch-pull:", ini_b)
        self.assertIn("\nurl = http://%s:8081\n" % NET["C"], ini_b)
        primary = read(os.path.join(out, "A/root/etc/redis/redis.conf"))
        self.assertIn("\nport 6379\nbind 127.0.0.1 -::1 %s\n" % NET["A"], primary)
        self.assertNotIn("tls-", primary)
        self.assertFalse(os.path.exists(os.path.join(out, "A/root/etc/minard/curve")))
        # on loopback addresses plain text stays on the machine: no need to force
        code, _o, err = cli(self.inputs.argv(self.inputs.out(), addresses=LOOP, keys=False,
                                             tls=False))
        self.assertEqual(code, 0, err)

    def test_bad_inputs_are_refused_with_the_reason(self):
        i = self.inputs
        other_acl, _urls = redis_acl(os.path.join(i.dir, "other-acl"), NET["A"])
        wrong_certs = make_host_certs(os.path.join(i.dir, "wrong-tls"),
                                      {"A": "10.9.9.9", "C": NET["C"]})
        cases = [
            (["--redis-acl", other_acl], "is not the one of --redis-urls"),
            (["--tls", wrong_certs], "A.crt does not name 10.0.0.1"),
            (["--hosts", "A=10.0.0.1,E=10.0.0.5,C=10.0.0.3"],
             "no key pair E in %s: make them with `minard-keys %s E`" % (i.keys, i.keys)),
            (["--hosts", "A=10.0.0.1,B=10.0.0.1,C=10.0.0.3"], "two hosts with the address"),
            (["--hosts", "A=10.0.0.1,B=db1.example,C=10.0.0.3"], "'db1.example' is not an IPv4"),
            (["--hosts", "A=10.0.0.1,C=10.0.0.3"], "no worker host"),
            (["--web-host", "A"], "--push-host and --web-host must be two hosts"),
            (["--push-host", "X"], "--push-host X is not one of --hosts (A, B, C)"),
            (["--workers", "0"], "--workers must be 1-64"),
        ]
        for extra, message in cases:
            out = i.out()
            code, _o, err = cli(i.argv(out) + extra)
            self.assertEqual(code, 1, extra)
            self.assertIn(message, err, extra)
            self.assertFalse(os.path.exists(out), extra)
        # an --out with files in it is not overwritten unless --force
        self.assertEqual(cli(i.argv(self.out))[0], 1)
        self.assertEqual(cli(i.argv(self.out, extra=["--force"]))[0], 0)

    def test_adding_a_worker_host(self):
        """B's, and A's and C's configuration files stay as they were; A gets D's public
        key, C D's programs; install.sh on A drops the key of a host no longer there."""
        out = self.inputs.out()
        code, _o, err = cli(self.inputs.argv(out, hosts="A,B,C,D"))
        self.assertEqual(code, 0, err)
        after = {h: tree(os.path.join(out, h)) for h in "ABCD"}
        self.assertEqual(after["B"], self.files["B"])
        for path in ("root/etc/minard/minard.ini", "root/etc/minard/supervisord.conf",
                     "root/etc/redis/redis.conf"):
            self.assertEqual(after["A"][path], self.files["A"][path], path)
            if path in self.files["C"]:
                self.assertEqual(after["C"][path], self.files["C"][path], path)
        self.assertEqual(after["A"]["root/etc/minard/curve/workers/D.key"],
                         read(os.path.join(self.inputs.keys, "D.key"), "rb"))
        self.assertIn(b"\n[dispatch-pull-D-2]\nmachine = D\n",
                      after["C"]["root/etc/minard/programs.ini"])
        self.assertIn(b"curve-secret = /etc/minard/curve/D.key_secret",
                      after["D"]["root/etc/minard/minard.ini"])
        # install A of A,B,C,D, then A of A,C,D: B's key goes
        stage = os.path.abspath(self.mktemp())
        env = dict(os.environ, DESTDIR=stage, MINARD_GROUP="root", REDIS_GROUP="root")
        run = subprocess.run(["sh", os.path.join(out, "A", "install.sh")], env=env,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        workers = os.path.join(stage, "etc/minard/curve/workers")
        self.assertEqual(sorted(os.listdir(workers)), ["B.key", "D.key"])
        out2 = self.inputs.out()
        self.assertEqual(cli(self.inputs.argv(out2, hosts="A,C,D"))[0], 0)
        run = subprocess.run(["sh", os.path.join(out2, "A", "install.sh")], env=env,
                             capture_output=True, text=True, timeout=60)
        self.assertEqual(run.returncode, 0, run.stderr)
        self.assertIn("removing %s/B.key" % workers, run.stdout)
        self.assertEqual(os.listdir(workers), ["D.key"])
        self.assertIn("systemctl restart redis-server", run.stdout)


class InstalledHosts:
    """Hosts A, B, C on loopback addresses, each rendered for a root directory of its own
    and installed there by its install.sh: the files as each host would see them."""

    def __init__(self):
        i = inputs()
        self.dir = tempfile.mkdtemp(prefix="minard-hosts-")
        atexit.register(shutil.rmtree, self.dir, True)
        self.tls = make_host_certs(os.path.join(self.dir, "tls"),
                                   {"A": LOOP["A"], "C": LOOP["C"]})
        self.ports = dict(zip(deploy.DEFAULT_PORTS, deploy.free_ports(len(deploy.DEFAULT_PORTS))))
        self.replica_port = free_port()
        self.roots, self.layouts = {}, {}
        argv = ["multi-host", "--out", "-", "--hosts",
                ",".join("%s=%s" % kv for kv in LOOP.items()), "--push-host", "A",
                "--web-host", "C", "--workers", "2", "--keys", i.keys, "--tls", self.tls,
                "--redis-urls", i.urls, "--redis-acl", i.acl]
        args = deploy.cli.build_parser().parse_args(argv)
        for host in "ABC":
            root = os.path.join(self.dir, host)
            layout = multihost.from_arguments(args, base=rooted(root, self.ports))
            out = os.path.join(self.dir, "out-" + host)
            multihost.write(layout, out, keys_dir=i.keys, tls_dir=self.tls, acl_file=i.acl)
            env = dict(os.environ, MINARD_GROUP="root", REDIS_GROUP="root")
            run = subprocess.run(["sh", os.path.join(out, host, "install.sh")], env=env,
                                 capture_output=True, text=True, timeout=60)
            assert run.returncode == 0, run.stderr
            # what the operator makes on each host (README.md): the log-server users, the
            # processes' password, the directories of logs and data
            base = layout.layout(layout.push)
            for d in (base.log_dir, base.daq_log_dir, base.redis_dir,
                      os.path.dirname(base.redis_logfile), os.path.dirname(base.redis_pidfile),
                      os.path.dirname(base.nginx_error_log)):
                os.makedirs(d, exist_ok=True)
            for name in ("users", "monitor.password"):
                with open(os.path.join(base.etc, name), "w") as f:
                    f.write("minard:x\n" if name == "users" else "secret\n")
            auth, _ctl = deploy.render_supervisor_secrets(base, "s3cret")
            with open(base.supervisor_auth, "w") as f:
                f.write(auth)
            self.roots[host] = root
            self.layouts[host] = layout

    def host(self, name):
        layout = self.layouts[name]
        return layout, [h for h in layout.hosts() if h.name == name][0]


_installed = None


def installed():
    global _installed
    if _installed is None:
        _installed = InstalledHosts()
    return _installed


class TLSRedis(SyncRedis):
    """SyncRedis over TLS, from a role's rediss:// URL (the certificate checked)."""

    def __init__(self, url):
        p = parse_redis_url(url)
        SyncRedis.__init__(self, p["port"], password=p["password"], host=p["host"],
                           user=p["username"])
        self.context = ssl.create_default_context(cafile=p["ca"])

    def _connect(self):
        raw = socket.create_connection(self.address, timeout=10)
        return self.context.wrap_socket(raw, server_hostname=self.address[0])


class InstalledHostsTests(unittest.TestCase):
    """Each host's installed files, used by what reads them."""

    def setUp(self):
        self.hosts = installed()

    def test_install_sh_sets_modes(self):
        layout, host = self.hosts.host("A")
        modes = {target: mode for target, (mode, _g) in layout.modes(host).items()}
        modes.update({target: mode for target, (_s, mode, _g)
                      in layout.copies(host, "k", "t", "a").items()})
        self.assertEqual(modes[layout.layout(host).ini], 0o640)  # Redis passwords
        self.assertEqual(len(modes), 10)
        for target, mode in modes.items():
            self.assertEqual(os.stat(target).st_mode & 0o777, mode, target)
        self.assertEqual(os.stat(layout.layout(host).etc).st_mode & 0o777, 0o750)

    def test_every_minard_ini_passes_the_role_parser(self):
        from minard.monitor import poster_from_config

        keys = inputs().keys
        expected_roles = {"A": ["dispatch-push", "data-producer", "simulator"],
                          "B": ["dispatch-pull", "data-consumer"], "C": ["web", "log-server"]}
        for name in "ABC":
            layout, host = self.hosts.host(name)
            path = layout.layout(host).ini
            from minard.programs import read_ini
            sections = read_ini(path).sections()
            self.assertEqual([s for s in sections if s in tap.ROLES], expected_roles[name])
            for role in expected_roles[name]:
                table = tap.COMMON + tap.ROLES[role]
                values = tap.resolve(role, table, {"config": path})  # every value checked
                if role in ("dispatch-push", "data-producer"):
                    endpoints = [values.get("zmq"), values.get("cmos-zmq"),
                                 values.get("base-zmq")]
                    server = curve.server_keys(values, [e for e in endpoints if e])
                    self.assertEqual(server.public, public_key(os.path.join(
                        keys, role + ".key")))
                    self.assertEqual(server.allowed, {public_key(os.path.join(keys, "B.key"))})
                if role in ("dispatch-pull", "data-consumer"):
                    client = curve.client_keys(values, [values["zmq"] or ""])
                    self.assertEqual(client.public, public_key(os.path.join(keys, "B.key")))
                    server = "dispatch-push" if role == "dispatch-pull" else "data-producer"
                    self.assertEqual(client.server_public,
                                     public_key(os.path.join(keys, server + ".key")))
                if role in multihost.REDIS_ROLES:
                    p = parse_redis_url(values["redis"])
                    self.assertEqual((p["host"], p["tls"], p["username"]),
                                     (LOOP["A"], True, role))
            monitor = values["config-sections"]["monitor"]
            poster, interval = poster_from_config(monitor)
            expected = ("http://127.0.0.1:%d" % self.hosts.ports["log"] if name == "C" else
                        "https://%s:%d/monitoring" % (LOOP["C"], deploy.NGINX_TLS_PORT))
            self.assertEqual(poster.base_url, expected)
            poster.close()

    def test_redis_primary_and_replica_start_and_replicate(self):
        layout_a, a = self.hosts.host("A")
        layout_c, c = self.hosts.host("C")
        processes = []

        def start(conf, *extra):
            p = subprocess.Popen([REDIS, conf] + list(extra), stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT)
            processes.append(p)
            return p

        def stop():
            for p in processes:
                p.terminate()
                p.wait(10)
                p.stdout.close()

        self.addCleanup(stop)
        # the rendered files as they are (the replica's port moved: both hosts are this
        # machine; the primary's log to stdout, to show why if it does not start)
        primary = start(layout_a.layout(a).redis_conf, "--logfile", "")
        push = TLSRedis(role_config(layout_a.layout(a).ini, "dispatch-push")["redis"])

        def answers(r):
            try:
                return r.command("PING") == "PONG"
            except (OSError, RuntimeError):
                if primary.poll() is not None:
                    raise AssertionError(primary.stdout.read().decode(errors="replace"))
                return False

        poll(lambda: answers(push), 15, "the rendered Redis primary (TLS, ACL)")
        start(layout_c.layout(c).redis_conf, "--port", str(self.hosts.replica_port),
              "--logfile", "")
        # every role's URL of every host logs in as its user (AUTH user password: a
        # refusal raises), and the user is the role's: web may not write ts:*
        for name, roles in (("A", ("dispatch-push", "data-producer")),
                            ("B", ("dispatch-pull", "data-consumer")),
                            ("C", ("web", "log-server"))):
            layout, host = self.hosts.host(name)
            for role in roles:
                url = role_config(layout.layout(host).ini, role)["redis"]
                self.assertEqual(TLSRedis(url).command("PING"), "PONG")
                if role == "web":
                    with self.assertRaises(Exception) as denied:
                        TLSRedis(url).command("HSET", "ts:1:7:trig", "TOTAL", "1")
                    self.assertIn("NOPERM", str(denied.exception))
        # a worker's write reaches the web host's replica; the web reads it as `web`
        layout_b, b = self.hosts.host("B")
        pull = role_config(layout_b.layout(b).ini, "dispatch-pull")
        TLSRedis(pull["redis"]).command("HSET", "ts:1:7:trig", "TOTAL", "42")
        web = role_config(layout_c.layout(c).ini, "web")
        replica = parse_redis_url(web["redis-replica"])
        self.assertEqual((replica["host"], replica["tls"]), ("127.0.0.1", False))
        on_replica = SyncRedis(self.hosts.replica_port, password=replica["password"],
                               user=replica["username"])
        poll(lambda: on_replica.command("HGET", "ts:1:7:trig", "TOTAL") == "42", 20,
             "the write on the replica")
        info = on_replica.command("INFO", "replication")
        self.assertIn("master_link_status:up", info)
        self.assertIn("master_host:%s" % LOOP["A"], info)

    def test_nginx_accepts_the_web_host_file(self):
        layout, host = self.hosts.host("C")
        hl = layout.layout(host)
        prefix = os.path.abspath(self.mktemp())
        os.makedirs(prefix)
        text = read(hl.nginx_conf)
        if os.geteuid() != 0:
            text = text.replace("user www-data;\n", "")
        temp = "".join("    %s_temp_path %s/%s;\n" % (k, prefix, k)
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(text.replace("http {\n", "http {\n" + temp, 1))
        code, output = nginx_test(conf, prefix)
        self.assertEqual(code, 0, output)
        self.assertIn("syntax is ok", output)
        self.assertIn("ssl_certificate %s/C.crt;" % hl.tls_dir, text)

    def test_supervisord_parses_every_host_file(self):
        for name in "ABC":
            layout, host = self.hosts.host(name)
            parsed = parse_supervisord(os.path.join(layout.layout(host).etc, "supervisord.conf"),
                                       users=["minard"])
            self.assertEqual(parsed["warnings"], [])
            found = set()
            for group, config in parsed["groups"].items():
                for p in config["processes"]:
                    found.add(p["name"] if group == p["name"] else "%s:%s" % (group, p["name"]))
                    self.assertIn("--config %s " % layout.layout(host).ini, p["command"] + " ")
            self.assertEqual(found, set(layout.process_names(host)))
