"""Deployment: the production files in etc/ (checked with nginx -t, supervisord's own parser
and a real redis-server) and the local system of scripts/run-local, end to end: every
program RUNNING under supervisord, events in Redis, the site through nginx under
/monitoring/, a killed program restarted, a stale-data alarm raised once and cleared.
"""
import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from urllib.parse import urlencode

from twisted.trial import unittest

from minard import constants as C
from minard import deploy, tap
from minard.monitor import MONITOR_KEYS
from minard.programs import load_programs
from minard.watchdog import parse_section
from tests.support import REPO, SyncRedis, free_port

ETC = os.path.join(REPO, "etc")
NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
SUPERVISORD = shutil.which("supervisord") or "/usr/bin/supervisord"


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def supervisor_python():
    """The Python that runs supervisord (it has the `supervisor` package)."""
    with open(SUPERVISORD, encoding="utf-8", errors="replace") as f:
        first = f.readline()
    return first[2:].strip().split()[0] if first.startswith("#!") else "/usr/bin/python3"


def parse_supervisord(conf, users=(), dirs=()):
    args = [supervisor_python(), os.path.join(REPO, "tests", "supervisor_parse.py"), conf]
    for user in users:
        args += ["--user", user]
    for d in dirs:
        args += ["--dir", d]
    result = subprocess.run(args, capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise AssertionError("supervisord cannot parse %s:\n%s" % (conf, result.stderr))
    return json.loads(result.stdout)


def nginx_test(conf, prefix):
    result = subprocess.run([NGINX, "-t", "-p", prefix, "-e", os.path.join(prefix, "err.log"),
                             "-c", conf], capture_output=True, text=True, timeout=60)
    return result.returncode, result.stdout + result.stderr


def poll(predicate, timeout, what, interval=0.25):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError("%s: not within %d s (last error: %s)" % (what, timeout, last))


def http(url, data=None, auth=None, timeout=5):
    """(status, headers, body) of one request; HTTP errors are answers too."""
    request = urllib.request.Request(url, data=data)
    if auth:
        token = base64.b64encode(("%s:%s" % auth).encode()).decode()
        request.add_header("Authorization", "Basic " + token)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=timeout) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


class ProductionFilesTests(unittest.TestCase):
    """etc/supervisord.conf, nginx.conf, redis.conf and minard.ini as committed."""

    def test_files_are_the_renders(self):
        for name, render in deploy.PRODUCTION_FILES.items():
            self.assertEqual(read(os.path.join(ETC, name)), render(deploy.PRODUCTION),
                             "etc/%s differs from minard/deploy/templates/: run "
                             "`python -m minard.deploy production etc`" % name)

    def test_supervisord_runs_every_role_as_minard(self):
        parsed = parse_supervisord(os.path.join(ETC, "supervisord.conf"), users=["minard"],
                                   dirs=["/var/log/minard", "/run", "/opt/minard"])
        group = parsed["groups"]["minard"]
        names = [p["name"] for p in group["processes"]]
        self.assertEqual(sorted(names), sorted(
            ["log-server", "web", "dispatch-push", "data-producer"] +
            ["dispatch-pull-%d" % i for i in range(4)] +
            ["data-consumer-cmos-%d" % i for i in range(2)] +
            ["data-consumer-base-%d" % i for i in range(2)]))
        simulator = parsed["groups"]["simulator"]["processes"]
        self.assertEqual([p["autostart"] for p in simulator], [False])
        roles = {"log-server": "log-server", "web": "web", "dispatch-push": "dispatch-push",
                 "data-producer": "data-producer", "simulator": "simulator"}
        for p in group["processes"] + simulator:
            name = p["name"]
            role = roles.get(name) or ("dispatch-pull" if name.startswith("dispatch-pull")
                                       else "data-consumer")
            self.assertTrue(p["command"].startswith(
                "/opt/minard/.venv/bin/twistd -n --pidfile= --logfile=- minard --role=%s "
                "--config /etc/minard/minard.ini" % role), p["command"])
            self.assertEqual(p["uid"], 4242, "%s must run as minard" % name)
            self.assertEqual(p["stdout_logfile"], "/var/log/minard/%s.log" % name)
            self.assertTrue(p["redirect_stderr"])
            self.assertTrue(p["autorestart"], name)
            self.assertEqual(p["stopsignal"], signal.SIGTERM)
            self.assertGreaterEqual(p["stopwaitsecs"], 15)
            self.assertEqual(p["directory"], "/opt/minard")
            self.assertEqual(p["environment"].get("PYTHONPATH"), "/opt/minard")
            if role == "dispatch-pull":
                self.assertTrue(p["command"].endswith("--name " + name), p["command"])
            if role == "data-consumer":
                port = 5557 if "cmos" in name else 5558
                self.assertTrue(p["command"].endswith("--port %d" % port), p["command"])
        [server] = parsed["servers"]
        self.assertEqual((server["host"], server["port"]), ("127.0.0.1", C.SUPERVISOR_PORT))
        self.assertEqual(server["username"], deploy.SUPERVISOR_USER)
        # without the root-only include nobody can log in: not a SHA-1 hex digest
        self.assertTrue(server["password"].startswith("{SHA}"))
        self.assertNotRegex(server["password"][5:], "^[0-9a-f]{40}$")

    def test_supervisord_password_comes_from_the_include(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        auth = os.path.join(directory, "supervisord-auth.conf")
        text, _ctl = deploy.render_supervisor_secrets(deploy.PRODUCTION, "s3cret")
        with open(auth, "w") as f:
            f.write(text)
        conf = os.path.join(directory, "supervisord.conf")
        with open(conf, "w") as f:
            f.write(read(os.path.join(ETC, "supervisord.conf")).replace(
                "files = /etc/minard/supervisord-auth.conf", "files = " + auth))
        parsed = parse_supervisord(conf, users=["minard"],
                                   dirs=["/var/log/minard", "/run", "/opt/minard"])
        import hashlib
        self.assertEqual(parsed["servers"][0]["password"],
                         "{SHA}" + hashlib.sha1(b"s3cret").hexdigest())
        self.assertEqual(parsed["warnings"], [])

    def test_nginx_accepts_the_production_file(self):
        """nginx -t on etc/nginx.conf itself; only the files it would write (pid, logs,
        temp files) are moved into a temporary directory."""
        prefix = os.path.abspath(self.mktemp())
        os.makedirs(prefix)
        text = read(os.path.join(ETC, "nginx.conf"))
        for old in ("/run/nginx.pid", "/var/log/nginx/error.log",
                    "/var/log/nginx/minard-access.log"):
            self.assertIn(old, text)
            text = text.replace(old, os.path.join(prefix, os.path.basename(old)))
        temp = "".join("    %s_temp_path %s/%s;\n" % (k, prefix, k)
                       for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        text = text.replace("http {\n", "http {\n" + temp, 1)
        if os.geteuid() != 0:  # `user` needs root; nginx ignores it with a warning otherwise
            text = text.replace("user www-data;\n", "")
        conf = os.path.join(prefix, "nginx.conf")
        with open(conf, "w") as f:
            f.write(text)
        code, output = nginx_test(conf, prefix)
        self.assertEqual(code, 0, output)
        self.assertIn("syntax is ok", output)

    def test_redis_accepts_the_production_file(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        process = subprocess.Popen(
            [REDIS, os.path.join(ETC, "redis.conf"), "--port", str(port), "--dir", directory,
             "--pidfile", os.path.join(directory, "redis.pid"), "--logfile", "",
             "--supervised", "no"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

        def stop():
            process.terminate()
            process.wait(10)
            process.stdout.close()

        self.addCleanup(stop)
        redis = SyncRedis(port)
        poll(lambda: redis.command("PING") == "PONG", 10, "redis-server with etc/redis.conf")

        def get(key):
            return redis.command("CONFIG", "GET", key)[1]

        self.assertEqual(get("save"), "900 1 300 10 60 10000")
        self.assertEqual(get("dbfilename"), "dump.rdb")
        self.assertEqual(get("maxmemory"), str(2 * 1024 ** 3))
        self.assertEqual(get("maxmemory-policy"), "noeviction")
        self.assertEqual(get("protected-mode"), "yes")
        self.assertEqual(get("bind"), "127.0.0.1 -::1")
        self.assertEqual(get("appendonly"), "no")
        text = read(os.path.join(ETC, "redis.conf"))
        self.assertIn("\nport 6379\n", text)
        self.assertIn("\ndir /var/lib/redis\n", text)

    def test_minard_ini_fits_every_role(self):
        path = os.path.join(ETC, "minard.ini")
        files = (tap.existing_file, tap.writable_file)  # they exist on the server only
        for role, table in tap.ROLES.items():
            known = {name for name, *_ in tap.COMMON + table}
            values = tap.read_config(path, role, known)  # unknown keys raise
            checks = {name: check for name, _d, check, _t in tap.COMMON + table}
            for key, value in values.items():
                if key is not None and checks[key] not in files:
                    checks[key](value)
        sections = values[None]
        self.assertLessEqual(set(sections["monitor"]), MONITOR_KEYS)
        self.assertEqual(sections["monitor"]["url"], "http://127.0.0.1:%d" % C.LOG_SERVER_PORT)
        self.assertEqual(parse_section(sections["watchdog"]), (True, C.WATCHDOG_AFTER))


class LocalRenderTests(unittest.TestCase):
    """The local system's files, without starting it."""

    def setUp(self):
        self.directory = os.path.abspath(self.mktemp())
        self.system = deploy.LocalSystem(self.directory, out=io.StringIO())

    def test_busy_ports_are_named(self):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            busy = s.getsockname()[1]
            ports = dict(zip(deploy.DEFAULT_PORTS, deploy.free_ports(len(deploy.DEFAULT_PORTS))))
            ports["web"] = busy
            system = deploy.LocalSystem(self.directory, ports=ports, out=io.StringIO())
            with self.assertRaises(deploy.DeployError) as caught:
                system.start()
        message = str(caught.exception)
        self.assertIn("port %d (main web site (web)) is in use" % busy, message)
        self.assertIn("--port-offset", message)
        self.assertFalse(os.path.exists(os.path.join(self.directory, "etc")))

    def test_port_offset(self):
        ports = deploy.choose_ports(offset=10000)
        self.assertEqual(ports["web"], 18080)
        self.assertEqual(ports["nginx"], 60000)
        self.assertRaises(deploy.DeployError, deploy.choose_ports, offset=20000)
        auto = deploy.choose_ports(auto=True)
        self.assertEqual(len(set(auto.values())), len(deploy.DEFAULT_PORTS))

    def test_no_root_paths_and_private_secrets(self):
        self.system.render()
        etc = self.system.layout.etc
        for name in ("supervisord.conf", "nginx.conf", "redis.conf", "minard.ini"):
            text = read(os.path.join(etc, name)).replace(self.directory, "<DIR>")
            self.assertNotRegex(text, r'(^|[\s="])/(var|etc|run|opt|srv|home)/',
                                "%s has a path outside %s" % (name, self.directory))
        # the programs run as whoever runs scripts/run-local
        self.assertNotIn("\nuser = ", read(os.path.join(etc, "supervisord.conf")))
        for name in ("users", "monitor.password", "supervisorctl.conf",
                     "supervisord-auth.conf"):
            self.assertEqual(os.stat(os.path.join(etc, name)).st_mode & 0o077, 0, name)
        password = read(os.path.join(etc, "monitor.password")).strip()
        self.system.render()  # a second run keeps the log-server credentials
        self.assertEqual(read(os.path.join(etc, "monitor.password")).strip(), password)

    def test_local_nginx_and_supervisord_parse(self):
        self.system.render()
        layout = self.system.layout
        code, output = nginx_test(os.path.join(layout.etc, "nginx.conf"), layout.nginx_temp_dir)
        self.assertEqual(code, 0, output)
        parsed = parse_supervisord(os.path.join(layout.etc, "supervisord.conf"))
        names = set()
        for group, config in parsed["groups"].items():
            for p in config["processes"]:
                names.add(p["name"] if group == p["name"] else "%s:%s" % (group, p["name"]))
        self.assertEqual(names, set(deploy.process_names(layout)))
        self.assertEqual(parsed["groups"]["redis"]["priority"], 10)
        self.assertGreater(parsed["groups"]["nginx"]["priority"], deploy.GROUP_PRIORITY)
        self.assertEqual(parsed["warnings"], [])


def processes_under(directory):
    """pids of processes whose command line mentions `directory` (our own children only)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as f:
                    if directory.encode() in f.read():
                        pids.append(int(entry))
            except OSError:
                pass
    return pids


class LocalSystemEndToEnd(unittest.TestCase):
    """The whole local system on free ports in a temporary directory."""

    timeout = 300
    STALE_AFTER = 3

    def setUp(self):
        self.directory = tempfile.mkdtemp(prefix="minard-deploy-")
        self.ports = dict(zip(deploy.DEFAULT_PORTS, deploy.free_ports(len(deploy.DEFAULT_PORTS))))
        self.system = deploy.LocalSystem(self.directory, ports=self.ports,
                                         stale_after=self.STALE_AFTER, out=io.StringIO())
        self.addCleanup(self.clean_up)

    def clean_up(self):
        try:
            self.system.stop(timeout=60)
        finally:
            for pid in processes_under(self.directory):  # only if stop() failed
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            shutil.rmtree(self.directory, ignore_errors=True)

    def nginx(self, path, **kwargs):
        return http("http://127.0.0.1:%d%s" % (self.ports["nginx"], path), **kwargs)

    def alarms(self, after=-1):
        """The alarms with an id above `after`."""
        status, _h, body = self.nginx("/monitoring/get_alarm")
        alarms = json.loads(body)["alarms"] if status == 200 else []
        return [a for a in alarms if a["id"] > after]

    def count(self, alarms, text, level):
        return sum(1 for a in alarms if text in a["message"] and a["level"] == level)

    def count_program(self, alarms, name, what, level):
        """Alarms `<name> - <what>...` (a program's own: `log` is not `dflow_log`)."""
        return sum(1 for a in alarms if a["message"].startswith("%s - %s" % (name, what))
                   and a["level"] == level)

    def rate_now(self):
        now = int(time.time())
        query = urlencode({"expr": "TOTAL", "start": now - 3, "stop": now, "step": 1})
        status, _h, body = self.nginx("/monitoring/metric?" + query)
        return status == 200 and any(v for v in json.loads(body)["values"])

    def test_the_local_system(self):
        system = self.system
        started = time.time()
        system.start()
        system.wait_live(timeout=90)
        live = time.time() - started

        # supervisord runs every program, and they are all RUNNING
        states = system.processes()
        self.assertEqual(set(states), set(deploy.process_names(system.layout)))
        self.assertEqual({s for s in states.values()}, {"RUNNING"}, states)
        ctl = subprocess.run(["supervisorctl", "-c", system.layout.supervisorctl_conf, "status"],
                             capture_output=True, text=True, timeout=30)
        self.assertEqual(ctl.stdout.count("RUNNING"), len(states), ctl.stdout + ctl.stderr)

        # Redis gets events, CMOS rates and base currents
        redis = SyncRedis(self.ports["redis"])
        total = sum(int(redis.command("HGET", key, "TOTAL") or 0)
                    for key in redis.command("KEYS", "ts:1:*:trig"))
        self.assertGreater(total, 0)
        poll(lambda: all(redis.command("KEYS", "minard:chan:%s:5:*" % name)
                         for name in ("occupancy", "cmos", "base")),
             30, "finalised occupancy, CMOS and base buckets in Redis")

        # the site through nginx under /monitoring/
        status, headers, _ = self.nginx("/")
        self.assertEqual((status, headers["Location"].endswith("/monitoring/")), (302, True))
        status, headers, _ = self.nginx("/monitoring/")
        self.assertEqual((status, headers["Location"]), (302, "snostream"))
        status, headers, page = self.nginx("/monitoring/snostream")
        self.assertEqual(status, 200)
        self.assertIn(b"static/js/minard.js", page)
        for name, value in deploy.SECURITY_HEADERS:
            self.assertEqual(headers.get_all(name), [value], name)
        status, headers, script = self.nginx("/monitoring/static/js/minard.js")
        self.assertEqual(status, 200)
        with open(os.path.join(REPO, "minard", "static", "js", "minard.js"), "rb") as f:
            self.assertEqual(script, f.read())
        self.assertEqual(len(headers.get_all("Content-Security-Policy")), 1)
        self.assertIn(self.nginx("/monitoring/static/")[0], (403, 404))  # no listing
        self.assertEqual(self.nginx("/elsewhere")[0], 404)
        self.assertTrue(self.rate_now())

        # the log server through nginx: credentials from the local auth file, 64 KiB limit
        password = read(os.path.join(system.layout.etc, "monitor.password")).strip()
        form = urlencode({"name": "builder", "status": "ok"}).encode()
        self.assertEqual(self.nginx("/monitoring/heartbeat", data=form)[0], 401)
        status, _h, body = self.nginx("/monitoring/heartbeat", data=form,
                                      auth=(deploy.MONITOR_USER, password))
        self.assertEqual((status, body), (200, b"ok\n"))
        big = urlencode({"name": "builder", "level": 20,
                         "message": "x" * (C.MAX_BODY_BYTES + 1)}).encode()
        self.assertEqual(self.nginx("/monitoring/log", data=big,
                                    auth=(deploy.MONITOR_USER, password))[0], 413)
        # every minard process posts its heartbeat with the [monitor] credentials
        for name in ("dispatch-pull-0", "dispatch-pull-3", "minard-dispatch-push", "minard-web",
                     "minard-data-producer", "data-consumer-cmos-1", "data-consumer-base-0"):
            poll(lambda: json.loads(self.nginx("/monitoring/get_status?name=" + name)[2])
                 ["status"] == "ok", 20, "heartbeat of " + name)
        # a fresh system is healthy: every program of programs.ini is OK (the simulator
        # stands in for the DAQ programs) and none raised a "not responding" alarm
        programs = list(load_programs(system.layout.programs))
        stand_ins = deploy.stand_in_programs(system.layout)
        poll(lambda: all(json.loads(self.nginx("/monitoring/get_status?name=" + name)[2])
                         ["status"] == "ok" for name in programs), 30, "every program OK")
        self.assertEqual([a for a in self.alarms() if "not responding" in a["message"]], [])

        # /stream through nginx is not buffered: events arrive one by one, each second
        url = "http://127.0.0.1:%d/monitoring/stream" % self.ports["nginx"]
        with urllib.request.urlopen(url, timeout=10) as stream:
            arrivals = []
            while len(arrivals) < 2:
                if stream.readline().startswith(b"data:"):
                    arrivals.append(time.time())
        self.assertGreater(arrivals[1] - arrivals[0], 0.5)

        # a killed program is restarted by supervisord, and the data come back
        for name in ("minard:dispatch-pull-2", "minard:dispatch-push"):
            pid = system.process_info(name)["pid"]
            os.kill(pid, signal.SIGKILL)
            poll(lambda: (system.process_info(name)["statename"] == "RUNNING"
                          and system.process_info(name)["pid"] != pid), 30,
                 "%s restarted" % name)
        poll(self.rate_now, 30, "events after the restarts")

        # no events for longer than [watchdog] after-seconds: one alarm, then one 'cleared'
        # (alarms raised before, e.g. while the system was starting, do not count)
        def settled():  # every alarm raised so far (e.g. by the restarts above) is cleared
            alarms = self.alarms()
            return all(self.count(alarms, raised, 40) == self.count(alarms, cleared, 21)
                       for raised, cleared in (("no events", "events are arriving again"),
                                               ("no dispatcher", "dispatcher link is up"),
                                               ("no dispatch-pull", "workers are alive")))

        poll(settled, 20, "earlier alarms cleared")
        before = max([a["id"] for a in self.alarms()] or [-1])
        system.rpc().supervisor.stopProcess("minard:simulator")
        poll(lambda: self.count(self.alarms(before), "no events", 40), 30, "stale-data alarm")
        time.sleep(2 * self.STALE_AFTER)
        self.assertEqual(self.count(self.alarms(before), "no events", 40), 1)
        # the DAQ programs it stood in for stop too: one alarm each
        level = {name: p.alarm_level for name, p in load_programs(system.layout.programs).items()}
        poll(lambda: all(self.count_program(self.alarms(before), n, "not responding", level[n])
                         for n in stand_ins), 40, "a 'not responding' alarm for each DAQ program")
        system.rpc().supervisor.startProcess("minard:simulator")
        poll(lambda: self.count(self.alarms(before), "events are arriving again", 21), 40,
             "'cleared' alarm")
        poll(lambda: all(self.count_program(self.alarms(before), n, "responding again", 21)
                         for n in stand_ins), 30, "a 'cleared' alarm for each DAQ program")
        time.sleep(1)
        alarms = self.alarms(before)
        self.assertEqual(self.count(alarms, "no events", 40), 1, alarms)
        self.assertEqual(self.count(alarms, "events are arriving again", 21), 1, alarms)
        for name in programs:
            expected = 1 if name in stand_ins else 0
            self.assertEqual(self.count_program(alarms, name, "not responding", level[name]),
                             expected, name)
            self.assertEqual(self.count_program(alarms, name, "responding again", 21),
                             expected, name)
        # minard's own link changes are on /view_log?name=minard-dispatch-push
        def push_log():
            status, _h, body = self.nginx("/monitoring/tail?name=minard-dispatch-push")
            return "\n".join(json.loads(body)["lines"]) if status == 200 else ""

        poll(lambda: "connected to dispatcher" in push_log().rsplit("lost the dispatcher link",
                                                                     1)[-1], 20,
             "dispatch-push's 'lost' and 'connected' lines on its log page")
        self.assertIn(" - minard-dispatch-push - INFO - lost the dispatcher link", push_log())

        # stop: everything goes, Redis last (it writes its snapshot)
        self.assertTrue(system.stop(timeout=60))
        self.assertIsNone(system.supervisord_pid())
        self.assertEqual(processes_under(self.directory), [])
        self.assertTrue(os.path.exists(os.path.join(system.layout.redis_dir, "dump.rdb")))
        for name in ("web", "nginx", "redis", "supervisor"):
            self.assertFalse(deploy.port_in_use(self.ports[name]), name)
        self.assertLess(live, 60, "the dashboard took %.0f s to show live data" % live)
