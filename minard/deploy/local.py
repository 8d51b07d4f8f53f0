"""The local system behind `scripts/run-local`: Redis, nginx, supervisord and every minard
role plus the simulator, configured under one directory (./run) for the current user,
loopback only (`LocalSystem`), and the command line of `python -m minard.deploy local`.

    system = LocalSystem("run", ports=choose_ports(auto=True))
    system.start(); system.wait_live(90); ...; system.stop()

The files are the same templates as production's (minard/deploy/render.py), rendered for
`local_layout(directory)`.
"""
import errno
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from urllib.parse import urlencode

from minard.deploy.layouts import (DEFAULT_PORTS, MONITOR_USER, PORT_PURPOSE, PREFIX,
                                   SUPERVISOR_USER, DeployError, local_layout)
from minard.deploy.render import (render_ini, render_nginx, render_redis, render_supervisord,
                                  render_supervisor_secrets)


def port_in_use(port):
    """True if something listens on 127.0.0.1:port (or on every interface)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError as e:
            return e.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def free_ports(count):
    """`count` distinct ports nobody listens on right now."""
    sockets, ports = [], []
    try:
        while len(ports) < count:
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def choose_ports(offset=0, auto=False):
    if auto:
        return dict(zip(DEFAULT_PORTS, free_ports(len(DEFAULT_PORTS))))
    ports = {name: port + offset for name, port in DEFAULT_PORTS.items()}
    bad = [name for name, port in ports.items() if not 0 < port < 65536]
    if bad:
        raise DeployError("--port-offset %d puts port %s outside 1-65535" % (offset, bad[0]))
    return ports


class LocalSystem:
    """Every role, the simulator, Redis and nginx under one supervisord, in `directory`."""

    def __init__(self, directory, ports=None, stale_after=30, rate=1000.0, out=None):
        self.directory = os.path.abspath(directory)
        self.layout = local_layout(self.directory, ports, stale_after=stale_after, rate=rate)
        self.out = out or sys.stdout
        self.process = None  # supervisord, when started by this object
        self._ctl_password = None

    # paths
    @property
    def supervisord_conf(self):
        return os.path.join(self.layout.etc, "supervisord.conf")

    @property
    def state_file(self):
        return os.path.join(self.directory, "ports.json")

    def say(self, text):
        self.out.write(text + "\n")
        self.out.flush()

    def busy_ports(self):
        return [(name, port) for name, port in self.layout.ports.items() if port_in_use(port)]

    def check_ports(self):
        busy = self.busy_ports()
        if busy:
            lines = ["port %d (%s) is in use" % (port, PORT_PURPOSE[name]) for name, port in busy]
            hint = ""
            if any(name == "redis" for name, _ in busy):
                hint = ("\n  (a system Redis? `systemctl stop redis-server`, or use other ports)")
            raise DeployError(
                "cannot start the local system:\n  " + "\n  ".join(lines) + hint +
                "\nStop what uses them, or run on other ports: scripts/run-local --port-offset "
                "10000 (every port + 10000) or scripts/run-local --auto-ports (any free ports).")

    # rendering
    def render(self):
        """Write every configuration file and the local credentials (kept between runs)."""
        from minard.auth import hash_password, read_auth_file, write_auth_file, AuthFileError

        layout = self.layout
        for d in (self.directory, layout.etc, layout.log_dir, layout.daq_log_dir,
                  layout.redis_dir, layout.nginx_temp_dir):
            os.makedirs(d, exist_ok=True)
        os.chmod(self.directory, 0o700)
        os.chmod(layout.etc, 0o700)
        files = {"supervisord.conf": render_supervisord(layout),
                 "nginx.conf": render_nginx(layout),
                 "redis.conf": render_redis(layout),
                 "minard.ini": render_ini(layout)}
        # the log server's users: `minard` for the processes' heartbeats
        users_path = os.path.join(layout.etc, "users")
        password_path = os.path.join(layout.etc, "monitor.password")
        password = None
        try:
            with open(password_path, encoding="utf-8") as f:
                password = f.readline().strip() or None
            if MONITOR_USER not in read_auth_file(users_path):
                password = None
        except (OSError, AuthFileError):
            password = None
        if password is None:
            password = secrets.token_hex(16)
            _write_private(password_path, password + "\n")
            write_auth_file(users_path, {MONITOR_USER: hash_password(password)})
        self._ctl_password = secrets.token_hex(16)
        auth, ctl = render_supervisor_secrets(layout, self._ctl_password)
        files["supervisord-auth.conf"] = auth
        files["supervisorctl.conf"] = ctl
        for name, text in files.items():
            _write_private(os.path.join(layout.etc, name), text)
        with open(self.state_file, "w", encoding="utf-8") as f:
            json.dump(layout.ports, f)

    # supervisord
    def _read_ctl_password(self):
        if self._ctl_password is None:
            with open(self.layout.supervisorctl_conf, encoding="utf-8") as f:
                for line in f:
                    if line.startswith("password = "):
                        self._ctl_password = line.split("=", 1)[1].strip()
        return self._ctl_password

    def rpc(self):
        url = "http://%s:%s@127.0.0.1:%d/RPC2" % (SUPERVISOR_USER, self._read_ctl_password(),
                                                 self.layout.ports["supervisor"])
        return xmlrpc.client.ServerProxy(url)

    def supervisord_pid(self):
        """The pid of this directory's supervisord if it runs, else None."""
        try:
            with open(self.layout.supervisord_pidfile) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                cmdline = f.read().split(b"\0")
        except OSError:
            return None
        if self.supervisord_conf.encode() not in cmdline:
            return None  # a stale pidfile and a recycled pid
        return pid

    def start(self):
        """Start supervisord (in its own session: Ctrl-C reaches only run-local)."""
        if self.supervisord_pid() is not None:
            raise DeployError("the local system in %s is already running (supervisord pid %d); "
                              "stop it first: scripts/run-local stop"
                              % (self.directory, self.supervisord_pid()))
        self.check_ports()
        self.render()
        supervisord = shutil.which("supervisord") or "/usr/bin/supervisord"
        output = open(os.path.join(self.directory, "log", "supervisord.out"), "ab")
        self.process = subprocess.Popen(
            [supervisord, "-n", "-c", self.supervisord_conf], cwd=self.directory,
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
            start_new_session=True)
        output.close()
        deadline = time.time() + 20
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise DeployError("supervisord exited at once (code %s):\n%s" % (
                    self.process.returncode, self._tail(os.path.join(
                        self.directory, "log", "supervisord.out"), 20)))
            try:
                self.rpc().supervisor.getState()
                return
            except (OSError, xmlrpc.client.Error):
                time.sleep(0.2)
        raise DeployError("supervisord does not answer on 127.0.0.1:%d"
                          % self.layout.ports["supervisor"])

    def processes(self):
        """{group:name: state name} of every process supervisord runs."""
        info = self.rpc().supervisor.getAllProcessInfo()
        return {"%s:%s" % (p["group"], p["name"]) if p["group"] != p["name"] else p["name"]:
                p["statename"] for p in info}

    def process_info(self, name):
        return self.rpc().supervisor.getProcessInfo(name)

    def stop(self, timeout=90):
        """TERM supervisord: it stops every program in reverse priority order (nginx and the
        push side first, Redis last) and exits. Returns True if something was stopped."""
        pid = self.process.pid if self.process is not None else self.supervisord_pid()
        if pid is None or (self.process is not None and self.process.poll() is not None):
            return False
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not _alive(pid, self.process):
                break
            time.sleep(0.2)
        else:
            self.say("supervisord did not stop within %d s: killing its process group" % timeout)
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
            if self.process is not None:
                self.process.wait()
        # anything left in supervisord's session (it is the session leader: pgid == pid)
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        return True

    # waiting for live data
    def url(self, name, path=""):
        return "http://127.0.0.1:%d%s" % (self.layout.ports[name], path)

    def events_counted(self):
        """The largest TOTAL rate of the last 15 s according to the web site (or 0)."""
        now = int(time.time())
        query = urlencode({"expr": "TOTAL", "start": now - 15, "stop": now, "step": 1})
        body = _http_get(self.url("web", "/metric?" + query))
        values = json.loads(body)["values"]
        return max([v for v in values if v is not None] or [0])

    def through_nginx(self):
        page = _http_get(self.url("nginx", PREFIX + "/snostream")).decode("utf-8", "replace")
        script = _http_get(self.url("nginx", PREFIX + "/static/js/minard.js"))
        return "static/js/minard.js" in page and len(script) > 0

    def wait_live(self, timeout=90, should_stop=lambda: False):
        """Wait until every program is RUNNING, events are counted and nginx serves the site."""
        started = time.time()
        deadline = started + timeout
        stage, last_error = "programs", None
        while time.time() < deadline and not should_stop():
            if self.process is not None and self.process.poll() is not None:
                raise DeployError("supervisord exited (code %s)" % self.process.returncode)
            try:
                if stage == "programs":
                    states = self.processes()
                    fatal = [n for n, s in states.items() if s in ("FATAL", "EXITED")]
                    if fatal:
                        raise DeployError(self.diagnose("did not start: " + ", ".join(fatal)))
                    if all(s == "RUNNING" for s in states.values()):
                        self.say("  %d processes RUNNING (%.0f s)" % (len(states),
                                                                      time.time() - started))
                        stage = "events"
                if stage == "events":
                    rate = self.events_counted()
                    if rate > 0:
                        self.say("  events are counted: %.0f/s (%.0f s)" % (
                            rate, time.time() - started))
                        stage = "nginx"
                if stage == "nginx" and self.through_nginx():
                    self.say("  the site answers through nginx (%.0f s)" % (time.time() - started))
                    return time.time() - started
            except DeployError:
                raise
            except (OSError, ValueError, KeyError, xmlrpc.client.Error) as e:
                last_error = e
            time.sleep(0.5)
        if should_stop():
            raise KeyboardInterrupt
        raise DeployError(self.diagnose("no live data within %d s (waiting for %s; last error: %s)"
                                        % (timeout, stage, last_error)))

    def diagnose(self, headline):
        """headline + which processes are not RUNNING, with the end of their logs."""
        lines = [headline]
        try:
            states = self.processes()
        except (OSError, xmlrpc.client.Error) as e:
            return headline + "\n(supervisord does not answer: %s)" % (e,)
        for name, state in sorted(states.items()):
            if state != "RUNNING":
                short = name.split(":", 1)[-1]
                log = os.path.join(self.layout.log_dir, short + ".log")
                lines.append("--- %s is %s; end of %s:" % (name, state, log))
                lines.append(self._tail(log, 15))
        return "\n".join(lines)

    @staticmethod
    def _tail(path, n):
        try:
            with open(path, errors="replace") as f:
                return "".join(f.readlines()[-n:]).rstrip()
        except OSError:
            return "(no log)"

    def summary(self):
        p = self.layout.ports
        rel = os.path.relpath(self.directory)
        rel = rel if not rel.startswith("..") else self.directory
        return "\n".join([
            "minard is running (local system in %s):" % rel,
            "  dashboard through nginx:  %s" % self.url("nginx", PREFIX + "/"),
            "  main site (direct):       %s" % self.url("web", "/"),
            "  metrics (Prometheus):     %s" % self.url("web", "/metrics"),
            "  logging server:           %s   (user %s, password in %s/etc/monitor.password)"
            % (self.url("log"), MONITOR_USER, rel),
            "  processes:                scripts/minard-ctl status   "
            "(= supervisorctl -c %s/etc/supervisorctl.conf status)" % rel,
            "  logs:                     %s/log/minard/<program>.log, DAQ logs in %s/log/snoplus/"
            % (rel, rel),
            "  Redis:                    redis-cli -p %d" % p["redis"],
        ])


def _alive(pid, process=None):
    if process is not None:
        return process.poll() is None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(path, 0o600)


def _http_get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        return answer.read()


# -- command line ----------------------------------------------------------------------------

def _local_main(args):
    directory = os.path.abspath(args.dir)
    if args.action in ("stop", "status"):
        system = LocalSystem(directory, ports=_saved_ports(directory))
        if args.action == "stop":
            if system.stop():
                print("minard stopped (%s)" % directory)
            else:
                print("minard is not running in %s" % directory)
            return 0
        if system.supervisord_pid() is None:
            print("minard is not running in %s" % directory)
            return 1
        for name, state in sorted(system.processes().items()):
            print("%-36s %s" % (name, state))
        return 0

    ports = choose_ports(args.port_offset, args.auto_ports)
    system = LocalSystem(directory, ports=ports, stale_after=args.stale_after, rate=args.rate)
    if ports != DEFAULT_PORTS:
        print("using ports: " + ", ".join("%s %d" % (PORT_PURPOSE[n], p)
                                          for n, p in ports.items()))
    stop_signals = []

    def on_signal(signum, frame):
        stop_signals.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, on_signal)
    try:
        if system.supervisord_pid() is None:
            system.check_ports()  # before saying anything about starting
        print("starting Redis, nginx, supervisord and every minard role in %s ..." % directory)
        system.start()
        system.wait_live(args.timeout, should_stop=lambda: bool(stop_signals))
    except (DeployError, KeyboardInterrupt) as e:
        if isinstance(e, DeployError):
            sys.stderr.write("run-local: %s\n" % (e,))
        if system.process is not None:
            print("stopping ...")
            system.stop()
        return 1 if isinstance(e, DeployError) else 130
    print(system.summary())
    if args.detach:
        print("Stop it with: scripts/run-local stop")
        return 0
    print("Press Ctrl-C to stop everything (or run: scripts/run-local stop).")
    while not stop_signals and system.process.poll() is None:
        time.sleep(0.3)
    if system.process.poll() is not None and not stop_signals:
        print("supervisord has stopped (scripts/run-local stop?); done.")
        return 0
    print("\nstopping (nginx, then every role, then Redis) ...")
    system.stop()
    print("minard stopped.")
    return 0


def _saved_ports(directory):
    try:
        with open(os.path.join(directory, "ports.json"), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None
