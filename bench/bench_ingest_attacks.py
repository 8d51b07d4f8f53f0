"""Hostile and dead upstream links (issue 12, items 9 and 11): what they cost the ingest
roles and how long a dead link takes to notice.

1. Zero stream: a dispatcher (and a data server, after answering `OK`) written here sends
   zeros at --rate bytes/s to every connection, for --seconds, to a real
   `twistd minard --role=dispatch-push` (and `--role=data-producer`). Prints each role's
   CPU over the phase (/proc), what it took, its connections and its counters.
2. Silent link: a relay written here sits between the upstream server (sending records)
   and the role; once records flow it stops forwarding without closing anything (the
   kernel still ACKs, as for a hung dispatcher or a frozen relay). Prints how long after
   the stall the role dropped the link (the relay sees the close), when the push's
   `dispatcher` key was deleted, and how long after the relay forwards again records
   reach ZeroMQ again. Gives up after --notice-limit seconds.
3. Dead host: the same roles, with records flowing, in a private network namespace
   (`unshare -rn`: its own loopback, nothing else is touched) whose loopback is then taken
   down: every packet stops and nothing is closed, as when a builder loses power. Prints
   how long the role took to drop the link (TCP keepalive; pass --idle-timeout 0 to see
   keepalive alone). Skipped where unshare/ip/ss are not available.

    .venv/bin/python bench/bench_ingest_attacks.py
    .venv/bin/python bench/bench_ingest_attacks.py --seconds 20 --idle-timeout 3
    .venv/bin/python bench/bench_ingest_attacks.py --tree /tmp/minard-old   # another checkout

--tree runs the roles from another checkout of minard (e.g. `git archive HEAD | tar -x -C
DIR` of an older commit), for before/after figures; --idle-timeout is only passed to a
tree whose tap.py knows it. Everything listens on 127.0.0.1; every loop has a deadline.
"""
import argparse
import os
import platform
import select
import socket
import struct
import subprocess
import sys
import threading
import time

import zmq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from minard import constants as C  # noqa: E402
from minard.wire.controlhost import CASPUR  # noqa: E402
from tests.support import RedisServer, RoleProcess, SyncRedis, free_port  # noqa: E402

CHUNK = 64 * 1024
RECORD = struct.pack(">III", C.RECORD_PMT, 44, 0) + bytes(44)
EVENT_FRAME = CASPUR.frame("RAWDATA", RECORD)
BASE_RECORD = (struct.pack(">III", C.RECORD_BASE, 1100, 0)
               + struct.pack(">II16II", 3, 1, *([0xFFFFFFFF] * 16), 0) + bytes(1024))


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def listener():
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.1)
    return server, server.getsockname()[1]


class Upstream(threading.Thread):
    """A dispatcher ('dispatcher') or data server ('dataserver') that accepts any number of
    connections and sends each, on its own thread, `mode`: 'zeros' at `rate` bytes/s or
    'records' (a record every `interval` s). The data server answers the subscription
    with OK first."""

    def __init__(self, kind, mode, rate=0.0, interval=0.01, deadline=600):
        threading.Thread.__init__(self, daemon=True)
        self.kind = kind
        self.mode = mode
        self.rate = rate
        self.interval = interval
        self.deadline = time.time() + deadline
        self.server, self.port = listener()
        self.connections = 0
        self.sent = 0
        self.stopped = False

    def run(self):
        while not self.stopped and time.time() < self.deadline:
            try:
                conn, _ = self.server.accept()
            except socket.timeout:
                continue
            self.connections += 1
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()
        self.server.close()

    def serve(self, conn):
        conn.settimeout(0.5)
        try:
            if self.kind == "dataserver":
                data = b""
                while len(data) < 12 and time.time() < self.deadline and not self.stopped:
                    try:
                        data += conn.recv(4096)
                    except socket.timeout:
                        continue
                conn.sendall(struct.pack(">III", C.RECORD_SRSP, 3, C.RECORD_SCMD) + b"OK\0")
            start = time.perf_counter()
            sent = 0
            while not self.stopped and time.time() < self.deadline:
                if self.mode == "zeros":
                    ahead = sent - self.rate * (time.perf_counter() - start)
                    if ahead > 0:
                        time.sleep(min(0.01, ahead / self.rate))
                        continue
                    payload = bytes(CHUNK)
                else:
                    time.sleep(self.interval)
                    payload = EVENT_FRAME if self.kind == "dispatcher" else BASE_RECORD
                try:
                    conn.sendall(payload)
                except socket.timeout:
                    continue
                sent += len(payload)
                self.sent += len(payload)
        except OSError:
            pass  # the role dropped the connection
        finally:
            conn.close()

    def stop(self):
        self.stopped = True


class Relay(threading.Thread):
    """Forwards between the role and the upstream server until stall(); then reads and
    writes nothing, closes nothing, and only watches for the role closing its side."""

    def __init__(self, target_port, deadline=600):
        threading.Thread.__init__(self, daemon=True)
        self.target = target_port
        self.deadline = time.time() + deadline
        self.server, self.port = listener()
        self.pairs = []          # [inbound, outbound]
        self.stalled_at = None
        self.closed_at = None    # when the role closed its side after the stall
        self.accepted = 0
        self.stopped = False

    def stall(self):
        self.stalled_at = time.time()

    def resume(self):
        self.stalled_at = None

    def run(self):
        while not self.stopped and time.time() < self.deadline:
            try:
                inbound, _ = self.server.accept()
                outbound = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                inbound.setblocking(False)
                outbound.setblocking(False)
                self.pairs.append([inbound, outbound])
                self.accepted += 1
            except socket.timeout:
                pass
            self.pump()
        for pair in self.pairs:
            for s in pair:
                s.close()
        self.server.close()

    def pump(self):
        sockets = [s for pair in self.pairs for s in pair]
        if not sockets:
            return
        readable, _, _ = select.select(sockets, [], [], 0.01)
        for pair in list(self.pairs):
            inbound, outbound = pair
            if self.stalled_at is not None:
                if inbound in readable and self.closed(inbound):
                    self.closed_at = self.closed_at or time.time()
                    self.drop(pair)
                continue
            for src, dst in ((inbound, outbound), (outbound, inbound)):
                if src in readable:
                    try:
                        data = src.recv(CHUNK)
                    except OSError:
                        data = b""
                    if not data:
                        self.drop(pair)
                        break
                    dst.setblocking(True)
                    dst.sendall(data)
                    dst.setblocking(False)

    @staticmethod
    def closed(sock):
        try:
            return sock.recv(1, socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    def drop(self, pair):
        for s in pair:
            s.close()
        if pair in self.pairs:
            self.pairs.remove(pair)

    def stop(self):
        self.stopped = True


class Puller(threading.Thread):
    """ZeroMQ PULL sockets connected to the role's endpoints, counting records."""

    def __init__(self, endpoints, deadline=600):
        threading.Thread.__init__(self, daemon=True)
        self.context = zmq.Context()
        self.sockets = []
        for endpoint in endpoints:
            s = self.context.socket(zmq.PULL)
            s.connect(endpoint)
            self.sockets.append(s)
        self.records = 0
        self.deadline = time.time() + deadline
        self.stopped = False

    def run(self):
        poller = zmq.Poller()
        for s in self.sockets:
            poller.register(s, zmq.POLLIN)
        while not self.stopped and time.time() < self.deadline:
            for s, _ in poller.poll(50):
                self.records += len(s.recv_multipart()) - 1
        for s in self.sockets:
            s.close(0)
        self.context.term()

    def stop(self):
        self.stopped = True


class Role:
    """A minard role process from `tree`, its ZeroMQ endpoints, its stats."""

    def __init__(self, tree, role, redis, upstream_port, idle_timeout):
        self.role = role
        self.redis = redis
        self.endpoints = ["tcp://127.0.0.1:%d" % free_port()]
        args = ["--redis", redis.url, "--host", "127.0.0.1", "--port", str(upstream_port)]
        if role == "dispatch-push":
            args += ["--zmq", self.endpoints[0]]
        else:
            self.endpoints.append("tcp://127.0.0.1:%d" % free_port())
            args += ["--cmos-zmq", self.endpoints[0], "--base-zmq", self.endpoints[1]]
        with open(os.path.join(tree, "minard", "tap.py")) as f:
            knows_idle = "idle-timeout" in f.read()
        if idle_timeout is not None and knows_idle:
            args += ["--idle-timeout", "%g" % idle_timeout]
        if not knows_idle:
            self.setting = "(no --idle-timeout option)"
        elif idle_timeout is None:
            self.setting = "--idle-timeout default (%g s)" % (
                C.DISPATCHER_IDLE_TIMEOUT if role == "dispatch-push" else C.DATA_SERVER_SILENCE)
        else:
            self.setting = "--idle-timeout %g%s" % (idle_timeout, "" if idle_timeout else " (off)")
        self.process = RoleProcess(role, *args)
        self.tree = tree

    def start(self):
        # RoleProcess runs from this repository; point it at `tree`
        import tests.support as support
        saved = support.REPO
        support.REPO = self.tree
        try:
            self.process.start()
        finally:
            support.REPO = saved
        self.puller = Puller(self.endpoints)
        self.puller.start()
        return self

    @property
    def pid(self):
        return self.process.process.pid

    def stats(self):
        raw = SyncRedis(self.redis.port).hgetall("minard:stats:" + self.role)
        return {k: float(v) for k, v in raw.items()}

    def stop(self):
        self.puller.stop()
        self.process.stop()


def wait(predicate, limit, step=0.01):
    deadline = time.time() + limit
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return False


def zero_stream(args, redis, role_name):
    kind = "dispatcher" if role_name == "dispatch-push" else "dataserver"
    upstream = Upstream(kind, "zeros", rate=args.rate, deadline=args.seconds + 60)
    upstream.start()
    role = Role(args.tree, role_name, redis, upstream.port, args.idle_timeout).start()
    try:
        if not wait(lambda: upstream.connections, 30):
            print("  %s never connected:\n%s" % (role_name, role.process.log()[-2000:]))
            return
        cpu0, t0, sent0 = cpu_seconds(role.pid), time.time(), upstream.sent
        time.sleep(args.seconds)
        cpu, wall = cpu_seconds(role.pid) - cpu0, time.time() - t0
        sent = upstream.sent - sent0
        time.sleep(1.2)  # one more stats snapshot
        stats = role.stats()
    finally:
        upstream.stop()
        role.stop()
    counters = ["corrupt", "corrupt_useless_stream", "ignored_frames", "unexpected_records",
                "corrupt_unexpected_record", "drops", "records", "connected"]
    print("  %-13s CPU %6.2f s in %.1f s = %5.1f %% of a core; took %8.2f MB of %.2f MB "
          "offered (%.2f MB/s) in %d connection(s)"
          % (role_name, cpu, wall, 100 * cpu / wall, sent / 1e6, args.rate * wall / 1e6,
             sent / wall / 1e6, upstream.connections))
    print("  %-13s %s" % ("", ", ".join("%s %d" % (k, stats[k]) for k in counters
                                          if k in stats)))


def silent_link(args, redis, role_name):
    kind = "dispatcher" if role_name == "dispatch-push" else "dataserver"
    upstream = Upstream(kind, "records", interval=0.01 if kind == "dispatcher" else 0.1,
                        deadline=args.notice_limit + 120)
    upstream.start()
    relay = Relay(upstream.port, deadline=args.notice_limit + 120)
    relay.start()
    role = Role(args.tree, role_name, redis, relay.port, args.idle_timeout).start()
    sync = SyncRedis(redis.port)
    try:
        if not wait(lambda: role.puller.records >= 20, 30):
            print("  %s: no records through the relay:\n%s"
                  % (role_name, role.process.log()[-2000:]))
            return
        time.sleep(0.5)
        relay.stall()
        stalled = relay.stalled_at
        key_gone = None
        deadline = stalled + args.notice_limit
        while time.time() < deadline and relay.closed_at is None:
            if key_gone is None and role_name == "dispatch-push" \
                    and sync.command("GET", "dispatcher") is None:
                key_gone = time.time()
            time.sleep(0.01)
        if role_name == "dispatch-push" and key_gone is None:
            wait(lambda: sync.command("GET", "dispatcher") is None, 1.0)
            key_gone = time.time() if sync.command("GET", "dispatcher") is None else None
        setting = role.setting
        if relay.closed_at is None:
            print("  %-13s %s: NOT noticed within %g s (connected=%d in its stats; "
                  "dispatcher key %r)"
                  % (role_name, setting, args.notice_limit, role.stats().get("connected", -1),
                     sync.command("GET", "dispatcher") if role_name == "dispatch-push"
                     else "-"))
            return
        noticed = relay.closed_at - stalled
        line = "  %-13s %s: link dropped %.2f s after the stall" % (role_name, setting,
                                                                  noticed)
        if role_name == "dispatch-push":
            line += ("; `dispatcher` key deleted at %.2f s" % (key_gone - stalled)
                     if key_gone else "; `dispatcher` key still there")
        accepted = relay.accepted
        wait(lambda: relay.accepted > accepted, 60)
        line += "; reconnected %.2f s later" % (time.time() - relay.closed_at)
        records = role.puller.records
        relay.resume()
        resumed = time.time()
        if wait(lambda: role.puller.records > records, args.notice_limit):
            line += "; records again %.2f s after the relay forwarded again" % (
                time.time() - resumed)
        else:
            line += "; no records within %g s of the relay forwarding again" % (
                args.notice_limit)
        print(line)
    finally:
        relay.stop()
        upstream.stop()
        role.stop()


def established_to(port):
    """Established TCP connections to 127.0.0.1:port (from `ss`)."""
    out = subprocess.run(["ss", "-tnH", "state", "established", "dst", "127.0.0.1:%d" % port],
                         capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.strip()]


def loopback(state):
    subprocess.run(["ip", "link", "set", "lo", state], check=True)


def dead_host_inside(args, redis, role_name):
    """In a private network namespace: records flow, then every packet stops (the
    loopback goes down, like a builder losing power or a cut cable: no FIN, no RST)."""
    kind = "dispatcher" if role_name == "dispatch-push" else "dataserver"
    upstream = Upstream(kind, "records", interval=0.01 if kind == "dispatcher" else 0.1,
                        deadline=args.notice_limit + 120)
    upstream.start()
    role = Role(args.tree, role_name, redis, upstream.port, args.idle_timeout).start()
    try:
        if not wait(lambda: role.puller.records >= 20, 30):
            print("  %s: no records:\n%s" % (role_name, role.process.log()[-2000:]))
            return
        time.sleep(0.5)
        loopback("down")
        down = time.time()
        try:
            closed = wait(lambda: not established_to(upstream.port), args.notice_limit, 0.05)
            noticed = time.time() - down
        finally:
            loopback("up")
        if not closed:
            print("  %-13s %s: NOT noticed within %g s" % (role_name, role.setting,
                                                            args.notice_limit))
            return
        records = role.puller.records
        back = wait(lambda: role.puller.records > records, 60)
        print("  %-13s %s: link dropped %.2f s after every packet stopped; %s"
              % (role_name, role.setting, noticed,
                 "records again %.2f s after the network came back"
                 % (time.time() - down - noticed) if back else "no records within 60 s after"))
    finally:
        upstream.stop()
        role.stop()


def dead_host(args):
    """Re-run this script inside `unshare -rn` (a private network namespace with its own
    loopback, so that taking it down touches nothing else)."""
    command = ["unshare", "-rn", sys.executable, os.path.abspath(__file__), "--phase",
               "dead-host", "--tree", args.tree, "--notice-limit", "%g" % args.notice_limit]
    if args.idle_timeout is not None:
        command += ["--idle-timeout", "%g" % args.idle_timeout]
    try:
        result = subprocess.run(command, capture_output=True, text=True,
                                timeout=4 * args.notice_limit + 300)
    except (OSError, subprocess.TimeoutExpired) as e:
        print("  skipped: %s" % (e,))
        return
    lines = [line for line in result.stdout.splitlines() if line.startswith("  ")]
    if result.returncode or not lines:
        print("  skipped: a private network namespace (unshare -rn, ip, ss) is not "
              "available here: %s" % (result.stderr.strip().splitlines() or ["?"])[-1])
    for line in lines:
        print(line)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=20, help="zero-stream phase (s)")
    parser.add_argument("--rate", type=float, default=6.4e6,
                        help="zeros offered per connection, bytes/s (default 6.4 MB/s)")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="passed to both roles (default: theirs, 60 s / 30 s)")
    parser.add_argument("--notice-limit", type=float, default=None,
                        help="give up on noticing a silent link after this long (s); "
                             "default: twice the idle timeout + 10")
    parser.add_argument("--tree", default=REPO, help="run the roles from this checkout")
    parser.add_argument("--skip", choices=["zeros", "silent", "dead-host"], action="append",
                        default=[])
    parser.add_argument("--phase", choices=["dead-host"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.notice_limit is None:
        idle = args.idle_timeout or C.DISPATCHER_IDLE_TIMEOUT
        args.notice_limit = 2 * idle + 10
    args.tree = os.path.abspath(args.tree)
    if args.phase == "dead-host":  # inside the private network namespace
        loopback("up")
        redis = RedisServer().start()
        try:
            for role_name in ("dispatch-push", "data-producer"):
                dead_host_inside(args, redis, role_name)
        finally:
            redis.cleanup()
        return
    print("command: %s" % " ".join(["python"] + sys.argv))
    print("machine: %s, %d cores, Python %s; roles from %s"
          % (platform.platform(), os.cpu_count(), platform.python_version(), args.tree))
    redis = RedisServer().start()
    try:
        if "zeros" not in args.skip:
            print("zero stream, %.1f MB/s offered to every connection, %g s:"
                  % (args.rate / 1e6, args.seconds))
            for role_name in ("dispatch-push", "data-producer"):
                zero_stream(args, redis, role_name)
        if "silent" not in args.skip:
            print("silent link (a relay stops forwarding, closing nothing):")
            for role_name in ("dispatch-push", "data-producer"):
                silent_link(args, redis, role_name)
        if "dead-host" not in args.skip:
            print("dead host (every packet stops, nothing is closed; in a private network "
                  "namespace):")
            dead_host(args)
    finally:
        redis.cleanup()


if __name__ == "__main__":
    main()
