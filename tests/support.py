"""Test helpers: a private redis-server per test run, started by the tests themselves."""
import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time

from twisted.internet import defer, reactor, task


def free_port():
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server on a free port in a temporary directory."""

    def __init__(self, password=None, extra_args=()):
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.password = password
        self.extra_args = list(extra_args)  # e.g. --tls-port ..., --aclfile ...
        self.port = None
        self.process = None
        self.directory = None

    @property
    def url(self):
        auth = ":%s@" % self.password if self.password else ""
        return "redis://%s127.0.0.1:%d/0" % (auth, self.port)

    def start(self, port=None):
        if not os.path.exists(self.binary):
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.directory = self.directory or tempfile.mkdtemp(prefix="minard-redis-")
        self.port = port or self.port or free_port()
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", self.directory, "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            args += ["--requirepass", self.password]
        args += self.extra_args
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    if self.password:
                        s.sendall(b"AUTH %s\r\n" % self.password.encode())
                        s.recv(100)
                    s.sendall(b"PING\r\n")
                    if s.recv(100).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start on port %d" % self.port)

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def pause(self):
        """Freeze the server (SIGSTOP): the network to Redis stalls."""
        self.process.send_signal(signal.SIGSTOP)

    def resume(self):
        self.process.send_signal(signal.SIGCONT)

    def command(self, *args):
        """One synchronous command over a plain socket (for checking stored values)."""
        return SyncRedis(self.port, self.password).command(*args)

    def cleanup(self):
        self.stop()
        if self.directory:
            shutil.rmtree(self.directory, ignore_errors=True)


class ReplyError(RuntimeError):
    """An error reply of Redis (`-ERR ...`)."""


def encode_command(args):
    """One command in RESP: *N then $len/value per argument (bytes as they are)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


def read_reply(f):
    """One RESP reply from a binary file: bulk strings as bytes, errors as ReplyError
    instances (returned, not raised: a pipeline reads on past them)."""
    line = f.readline()
    if not line:
        raise ConnectionError("Redis closed the connection")
    kind, rest = line[:1], line[1:-2]
    if kind == b"+":
        return rest.decode()
    if kind == b"-":
        return ReplyError(rest.decode())
    if kind == b":":
        return int(rest)
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2]
    if kind == b"*":
        n = int(rest)
        return None if n < 0 else [read_reply(f) for _ in range(n)]
    raise ConnectionError("bad reply %r" % (line,))


def as_text(reply):
    """A reply with bulk strings as str (undecodable bytes kept by surrogateescape) and
    any error reply raised."""
    if isinstance(reply, ReplyError):
        raise reply
    if isinstance(reply, bytes):
        return reply.decode("utf-8", "surrogateescape")
    if isinstance(reply, list):
        return [as_text(r) for r in reply]
    return reply


class SyncRedis:
    """A tiny blocking RESP client for test assertions, independent of txredisapi."""

    def __init__(self, port, password=None, host="127.0.0.1", unix=None, user=None):
        self.address = (host, port)
        self.unix = unix  # a unix socket path instead of host:port
        self.password = password
        self.user = user  # an ACL user (AUTH user password)

    def _connect(self):
        if self.unix is None:
            return socket.create_connection(self.address, timeout=10)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(self.unix)
        return s

    def command(self, *args):
        with self._connect() as s:
            f = s.makefile("rb")
            if self.password:
                auth = ("AUTH", self.user, self.password) if self.user else ("AUTH", self.password)
                s.sendall(encode_command(auth))
                as_text(read_reply(f))
            s.sendall(encode_command(args))
            return as_text(read_reply(f))

    def get_bytes(self, *args):
        """A bulk reply as the bytes Redis holds (binary blobs)."""
        reply = self.command(*args)
        return None if reply is None else reply.encode("utf-8", "surrogateescape")

    def hgetall(self, key):
        flat = self.command("HGETALL", key)
        return dict(zip(flat[::2], flat[1::2]))


_shared = None


def shared_redis():
    """One redis-server for the whole test run (tests FLUSHALL it in setUp)."""
    global _shared
    if _shared is None:
        _shared = RedisServer().start()
        atexit.register(_shared.cleanup)
    return _shared


class RedisTestMixin:
    """setUp gives self.redis_server (empty) and self.sync (a SyncRedis)."""

    def setUp(self):
        self.redis_server = shared_redis()
        if self.redis_server.process is None or self.redis_server.process.poll() is not None:
            self.redis_server.start()
        self.redis_server.command("FLUSHALL")
        self.sync = SyncRedis(self.redis_server.port)


class RedisConnectionMixin(RedisTestMixin):
    """RedisTestMixin plus self.redis, minard's own connection to it (closed after)."""

    def setUp(self):
        RedisTestMixin.setUp(self)
        from minard.store.connection import connect
        self.redis = connect(self.redis_server.url)
        self.addCleanup(self.redis.disconnect)


def wait_for(predicate, timeout=10.0, interval=0.05):
    """A Deferred that fires when predicate() is true, or fails after timeout."""
    deadline = time.time() + timeout

    @defer.inlineCallbacks
    def loop():
        while True:
            if predicate():
                return True
            if time.time() > deadline:
                raise AssertionError("condition not met within %.1f s" % timeout)
            yield task.deferLater(reactor, interval, lambda: None)

    return loop()


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def twistd_command():
    """The twistd of the running Python (the project's virtualenv)."""
    import sys
    candidate = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(candidate):
        return [candidate]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class RoleProcess:
    """`twistd -n minard --role=ROLE ...` as a real child process, logging to a file."""

    def __init__(self, role, *args, directory=None, prefix=()):
        self.role = role
        self.args = list(args)
        self.prefix = list(prefix)  # e.g. ["ip", "netns", "exec", "ns1"]
        self.directory = directory or tempfile.mkdtemp(prefix="minard-%s-" % role)
        self.logfile = os.path.join(self.directory, "%s-%d.log" % (role, id(self)))
        self.process = None

    def start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        command = twistd_command() + ["-n", "--pidfile=", "--logfile", self.logfile,
                                      "minard", "--role=" + self.role] + self.args
        self.process = subprocess.Popen(self.prefix + command, cwd=REPO, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def signal(self, signum):
        if self.alive():
            self.process.send_signal(signum)

    def stop(self, timeout=15):
        """SIGTERM and wait; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def kill(self):
        if self.alive():
            self.process.kill()
            self.process.wait()

    def log(self):
        try:
            with open(self.logfile, errors="replace") as f:
                return f.read()
        except OSError:
            return ""


def page_fault(message):
    """True when a browser console message (Playwright ConsoleMessage) is a fault of the
    page: an error or warning, except the /stream connection reset by the server — a
    screen that cannot keep up (a throttled background tab, a loaded test machine) is
    dropped on purpose (web/stream.py) and the page reconnects by itself."""
    if message.type not in ("error", "warning"):
        return False
    location = message.location or {}
    if ("Failed to load resource" in message.text
            and str(location.get("url", "")).endswith("/stream")):
        return False
    return True


class RoleProcessesMixin:
    """spawn(role, *args): `twistd minard --role=ROLE` on this test's Redis
    (self.redis_server), kept in self.processes and stopped when the test ends."""

    def spawn(self, role, *args):
        p = RoleProcess(role, "--redis", self.redis_server.url, *args).start()
        if not hasattr(self, "processes"):
            self.processes = []
        self.processes.append(p)
        self.addCleanup(p.stop)
        return p
