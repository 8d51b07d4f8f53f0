"""Hostile clients against the real log-server role (issue 12): the figures of
bench/README.md ("bench_logserver_attacks.py").

    PYTHONPATH=. .venv/bin/python bench/bench_logserver_attacks.py \
        [--connections 1100] [--seconds 90] [--trickle 15] [--nofile 1024]

Starts `twistd -n minard --role=log-server` with RLIMIT_NOFILE soft = hard = --nofile (the
issue's machine had 1024; production 4096), a private redis-server, a temporary log
directory and auth file. All traffic goes to 127.0.0.1; other machines are played by
other loopback source addresses (127.0.0.2 ...), which the server sees as remote.

1. held-open, one machine: --connections connections from 127.0.0.2, each the issue's
   `POST /heartbeat HTTP/1.1`, a Host header and an unfinished header line, then one byte
   every --trickle s, reopened when cut, for --seconds s. Meanwhile, once a second: a
   program that logged in before the attack (127.0.0.3; /heartbeat and /log alternately,
   a new connection each, like curl), a program never seen before whose first post comes
   3 s into the attack (127.0.0.4; 127.0.0.6 in 2.), and a local one (127.0.0.1, as
   through nginx).
2. held-open, many machines: the same connections spread over 40 addresses (127.0.1.x),
   under the per-address cap: now the strangers' share of the connections fills up.
3. wrong-password flood: 200 concurrent wrong-password requests from 127.0.0.2; how many
   slow password checks (401) and refusals (429), and how long a first login (not in the
   server's cache) from 127.0.0.5 takes meanwhile.
4. user enumeration: a pbkdf2-sha256 i=600000 user; median time of a wrong password and
   of an unknown user (samples from distinct addresses, within the failed-login budget).
"""
import argparse
import base64
import concurrent.futures
import hashlib
import os
import resource
import selectors
import shlex
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from minard import auth  # noqa: E402
from tests.logserver_support import (PROGRAMS_INI, basic, connect_from, parse_answer,  # noqa: E402
                                     post_from, read_all, request_bytes)
from tests.support import RedisServer, free_port, twistd_command  # noqa: E402

PARTIAL = b"POST /heartbeat HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
HEARTBEAT = b"name=builder&status=ok"
LOG = b"name=builder&level=20&message=still+here"
USER, PASSWORD = "snoplus", "pw"
#: a user who logs in only once, during the wrong-password flood (not in the auth cache)
OTHER_USER, OTHER_PASSWORD = "daq", "other-pw"


def start_role(redis_url, directory, nofile):
    """The log-server role as a child process with the given descriptor limit."""
    port = free_port()
    users = os.path.join(directory, "users")
    auth.write_auth_file(users, {USER: auth.hash_password(PASSWORD),
                                 OTHER_USER: auth.hash_password(OTHER_PASSWORD)})
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    command = twistd_command() + [
        "-n", "--pidfile=", "--logfile", os.path.join(directory, "log-server.log"),
        "minard", "--role=log-server", "--redis", redis_url,
        "--listen", "tcp:%d:interface=127.0.0.1" % port,
        "--log-dir", os.path.join(directory, "logs"), "--programs", PROGRAMS_INI,
        "--auth-file", users]
    process = subprocess.Popen(command, cwd=ROOT, env=env, preexec_fn=limit,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 20
    while time.time() < deadline:
        status, _ = post_from("127.0.0.1", port, "/heartbeat", HEARTBEAT, timeout=2)
        if status == 200:
            return process, port, users
        if process.poll() is not None:
            raise RuntimeError("the log server exited with %s" % process.returncode)
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("the log server did not answer")


def descriptors(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return 0


class Flood:
    """Connections that trickle the issue's unfinished request, reopened when cut."""

    def __init__(self, port, sources, per_source, trickle):
        self.port = port
        self.sources = sources
        self.per_source = per_source
        self.trickle = trickle
        self.selector = selectors.DefaultSelector()
        self.open = {}  # socket -> source
        self.answers = Counter()
        self.opened = 0
        self.held_max = 0
        self.held_samples = []

    def open_one(self, source):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(1.0)
        try:
            s.bind((source, 0))
            s.connect(("127.0.0.1", self.port))
            s.sendall(PARTIAL)
        except OSError:
            self.answers["connect failed"] += 1
            s.close()
            return
        s.setblocking(False)
        self.opened += 1
        self.open[s] = source
        self.selector.register(s, selectors.EVENT_READ)

    def close(self, s):
        self.selector.unregister(s)
        self.open.pop(s, None)
        s.close()

    def read(self, s):
        try:
            data = s.recv(65536)
        except OSError:
            self.answers["reset"] += 1
            self.close(s)
            return
        status, _ = parse_answer(data) if data else (None, b"")
        self.answers[status if status else "closed, no answer"] += 1
        self.close(s)

    def run(self, seconds, pid, stop):
        """Hold the connections for `seconds`; per-second samples of what is held."""
        end = time.monotonic() + seconds
        next_byte = time.monotonic() + self.trickle
        next_sample = time.monotonic() + 1
        fd_max = 0
        while time.monotonic() < end and not stop.is_set():
            counts = Counter(self.open.values())
            budget = 200  # reopen at most this many per pass (bounded)
            for source in self.sources:
                for _ in range(self.per_source - counts[source]):
                    if budget <= 0:
                        break
                    self.open_one(source)
                    budget -= 1
            for key, _ in self.selector.select(timeout=0.1):
                self.read(key.fileobj)
            now = time.monotonic()
            if now >= next_byte:
                for s in list(self.open):
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
                next_byte = now + self.trickle
            if now >= next_sample:
                time.sleep(0.05)  # let refusals of this pass arrive before counting
                for key, _ in self.selector.select(timeout=0):
                    self.read(key.fileobj)
                held = len(self.open)
                self.held_samples.append(held)
                self.held_max = max(self.held_max, held)
                fd_max = max(fd_max, descriptors(pid))
                next_sample = now + 1
        for s in list(self.open):
            self.close(s)
        return fd_max


def programs_meanwhile(port, stop, results, newcomer):
    """Once a second: a known program, a new one and a local one post (threads)."""

    def loop(name, source, bodies, delay=0.0):
        stop.wait(delay)
        i = 0
        while not stop.is_set():
            path, body = bodies[i % len(bodies)]
            start = time.monotonic()
            status, _ = post_from(source, port, path, body, timeout=10)
            results[name].append((status, time.monotonic() - start))
            i += 1
            stop.wait(1.0)

    threads = [threading.Thread(target=loop, args=args, daemon=True) for args in (
        ("known program 127.0.0.3", "127.0.0.3", [("/heartbeat", HEARTBEAT), ("/log", LOG)]),
        ("new program " + newcomer, newcomer, [("/heartbeat", HEARTBEAT)], 3.0),
        ("local 127.0.0.1", "127.0.0.1", [("/heartbeat", HEARTBEAT)]))]
    for t in threads:
        t.start()
    return threads


def held_open(title, port, pid, sources, per_source, seconds, trickle, newcomer):
    print("\n%s: %d connections from %d address(es), a byte every %g s, %d s"
          % (title, per_source * len(sources), len(sources), trickle, seconds))
    post_from("127.0.0.3", port, "/heartbeat", HEARTBEAT)  # the known program logs in
    results = {k: [] for k in ("known program 127.0.0.3", "new program " + newcomer,
                               "local 127.0.0.1")}
    stop = threading.Event()
    flood = Flood(port, sources, per_source, trickle)
    threads = programs_meanwhile(port, stop, results, newcomer)
    fd_max = flood.run(seconds, pid, stop)
    stop.set()
    for t in threads:
        t.join(15)
    held = flood.held_samples[2:] or flood.held_samples
    print("  attacker: %d connections opened; held at once: max %d, median %d; answers %s"
          % (flood.opened, flood.held_max, statistics.median(held) if held else 0,
             dict(flood.answers)))
    print("  server descriptors in use: max %d" % fd_max)
    for name, posts in results.items():
        ok = [t for status, t in posts if status == 200]
        codes = Counter(status for status, _ in posts)
        print("  %-24s %3d of %3d posts answered 200 %s; latency p50 %.0f ms, max %.0f ms"
              % (name, len(ok), len(posts), dict(codes),
                 statistics.median(ok) * 1000 if ok else float("nan"),
                 max(ok) * 1000 if ok else float("nan")))


def wrong_password_flood(port, n=200):
    print("\nwrong-password flood: %d concurrent requests from 127.0.0.2" % n)
    wrong = basic(USER, "guess")
    login = {}

    def guess(_):
        return post_from("127.0.0.2", port, "/heartbeat", HEARTBEAT, authorization=wrong,
                         timeout=60)[0]

    def first_login():
        time.sleep(0.2)  # while the flood is being answered
        start = time.monotonic()
        try:
            with connect_from("127.0.0.5", port, timeout=60) as s:
                connected = time.monotonic()
                s.sendall(request_bytes("/heartbeat", HEARTBEAT,
                                        basic(OTHER_USER, OTHER_PASSWORD)))
                login["status"] = parse_answer(read_all(s))[0]
        except OSError as e:
            login["status"] = repr(e)
            connected = start
        login["connect"] = connected - start
        login["answer"] = time.monotonic() - connected

    start = time.monotonic()
    other = threading.Thread(target=first_login)
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        other.start()
        codes = Counter(pool.map(guess, range(n)))
    elapsed = time.monotonic() - start
    other.join(60)
    print("  answers %s in %.1f s: %d slow password checks (401) against a budget of "
          "10 + 1/s" % (dict(codes), elapsed, codes[401]))
    print("  first login from 127.0.0.5 meanwhile: %s, answered %.0f ms after its request "
          "(its TCP connect took %.0f ms: the listen queue is shared with the flood)"
          % (login.get("status"), login.get("answer", float("nan")) * 1000,
             login.get("connect", float("nan")) * 1000))


def pbkdf2_stored(password, iterations):
    salt = os.urandom(16)
    digest = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations, 32)
    return "pbkdf2-sha256$i=%d$%s$%s" % (iterations, base64.b64encode(salt).decode(),
                                         base64.b64encode(digest).decode())


def enumeration(port, users_path, samples=15):
    print("\nuser enumeration: a pbkdf2-sha256$i=600000 user, %d samples each" % samples)
    auth.write_auth_file(users_path, {USER: pbkdf2_stored(PASSWORD, 600000)})
    times = {"wrong password": [], "unknown user": []}
    for i in range(samples + 1):
        for kind, user in (("wrong password", USER), ("unknown user", "nobody")):
            source = "127.0.2.%d" % (1 + i % 200)  # within each address's failure budget
            start = time.monotonic()
            status, _ = post_from(source, port, "/heartbeat", HEARTBEAT,
                                  authorization=basic(user, "guess"), timeout=30)
            if i:  # the first round warms up (and reloads the auth file)
                times[kind].append(time.monotonic() - start)
            if status != 401:
                print("  unexpected answer %s" % status)
    for kind, values in times.items():
        print("  %-15s median %4.0f ms (min %4.0f, max %4.0f)"
              % (kind, statistics.median(values) * 1000, min(values) * 1000,
                 max(values) * 1000))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=1100)
    parser.add_argument("--seconds", type=int, default=90)
    parser.add_argument("--trickle", type=float, default=15.0,
                        help="seconds between the bytes of a held connection")
    parser.add_argument("--nofile", type=int, default=1024)
    args = parser.parse_args()
    if not 1 <= args.connections <= 20000 or not 1 <= args.seconds <= 3600:
        parser.error("--connections 1..20000, --seconds 1..3600")
    need = args.connections + 400
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    print("command: PYTHONPATH=. .venv/bin/python bench/bench_logserver_attacks.py "
          + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    redis = RedisServer().start()
    directory = tempfile.mkdtemp(prefix="minard-bench-attacks-")
    process = None
    try:
        process, port, users = start_role(redis.url, directory, args.nofile)
        print("log-server pid %d, RLIMIT_NOFILE %d" % (process.pid, args.nofile))
        held_open("held-open, one machine", port, process.pid, ["127.0.0.2"],
                  args.connections, args.seconds, args.trickle, "127.0.0.4")
        time.sleep(3)
        per = -(-args.connections // 40)
        held_open("held-open, many machines", port, process.pid,
                  ["127.0.1.%d" % i for i in range(1, 41)], per, args.seconds, args.trickle,
                  "127.0.0.6")
        time.sleep(3)
        wrong_password_flood(port)
        time.sleep(2)
        enumeration(port, users)
        print("\nlog-server still running: %s" % (process.poll() is None))
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        redis.cleanup()


if __name__ == "__main__":
    main()
