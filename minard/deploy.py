"""Deployment: the supervisord, nginx, Redis and minard configuration of a minard host,
rendered from one description of the host (`Layout`), and the one-command local system
behind `scripts/run-local`.

The production files in `etc/` (supervisord.conf, nginx.conf, redis.conf, minard.ini) are
`render_*(PRODUCTION)`, written by `python -m minard.deploy production etc`; the tests check
that the files in the tree are exactly these renders, so the production configuration and
the local one (same functions, a `Layout` under ./run with the current user) cannot drift
apart. Edit the templates here, then regenerate etc/.

    python -m minard.deploy production DIR          write the production files into DIR
    python -m minard.deploy local [start] [--dir run] [--port-offset N | --auto-ports]
                                  [--detach] [--timeout S] [--rate EV/S] [--stale-after S]
    python -m minard.deploy local stop|status [--dir run]
"""
import argparse
import dataclasses
import errno
import getpass
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import xmlrpc.client
from urllib.parse import urlencode, urlsplit

from minard import constants as C

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PREFIX = "/monitoring"  # the URL prefix of the site behind nginx (as the original)
GROUP = "minard"  # the supervisord group of every role
#: supervisord stops groups one after the other, highest priority number first, and
#: waits for each: nginx (900), then every role (the group, 500), then Redis (10) last,
#: after the pull workers have flushed into it. (Programs inside one group stop together.)
GROUP_PRIORITY = 500
SUPERVISOR_USER = "admin"  # user of supervisord's inet server
MONITOR_USER = "minard"  # the log-server user the minard processes post heartbeats as

#: (name, default port, what listens there): every port of a minard host.
PORTS = (
    ("web", C.WEB_PORT, "main web site (web)"),
    ("log", C.LOG_SERVER_PORT, "logging server (log-server)"),
    ("nginx", C.NGINX_PORT, "nginx (the site under /monitoring/)"),
    ("redis", C.REDIS_PORT, "Redis"),
    ("dispatcher", C.DISPATCHER_PORT, "ControlHost dispatcher (simulator)"),
    ("dataserver", C.DATA_SERVER_PORT, "data server (simulator)"),
    ("cmos", urlsplit(C.CMOS_ZMQ).port, "ZeroMQ CMOS records (data-producer)"),
    ("base", urlsplit(C.BASE_ZMQ).port, "ZeroMQ BASE records (data-producer)"),
    ("events", urlsplit(C.EVENTS_ZMQ).port, "ZeroMQ events (dispatch-push)"),
    ("supervisor", C.SUPERVISOR_PORT, "supervisord inet server"),
)
DEFAULT_PORTS = {name: port for name, port, _ in PORTS}
PORT_PURPOSE = {name: what for name, _, what in PORTS}

#: Security headers of every answer through nginx (the same as minard.web.site sends,
#: which nginx hides so that they are not doubled).
SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "same-origin"),
)
#: A /stream response lives as long as the browser tab: nginx must not time it out.
STREAM_READ_TIMEOUT = "1h"


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything of one minard host lives and which ports it uses."""

    kind: str  # "production" or "local"
    ports: dict
    repo: str  # the checkout: minard/static, PYTHONPATH, working directory of the roles
    twistd: str
    etc: str  # minard.ini, programs.ini, users, monitor.password, supervisor secrets
    log_dir: str  # supervisord's own log and one log per program
    daq_log_dir: str  # the DAQ programs' logs (log-server writes, web tails)
    programs: str  # programs.ini
    redis_dir: str
    redis_pidfile: str
    redis_logfile: str  # "" = stdout
    redis_maxmemory: str
    supervisord_pidfile: str
    nginx_pidfile: str
    nginx_error_log: str
    nginx_access_log: str
    nginx_user: str = None  # None: no `user` line
    nginx_temp_dir: str = None  # None: nginx's compiled-in temp paths
    nginx_listen_address: str = ""  # "" = every interface
    program_user: str = None  # None: run as whoever runs supervisord
    nodaemon: bool = True
    dispatcher_host: str = "127.0.0.1"
    dataserver_host: str = "127.0.0.1"
    log_server_interface: str = ""  # "" = every interface (DAQ machines post directly)
    simulator_autostart: bool = False
    simulator_rate: float = 1000.0
    infra: bool = False  # run Redis and nginx under supervisord too (local system)
    redis_bin: str = "/usr/bin/redis-server"
    nginx_bin: str = "/usr/sbin/nginx"
    redis_in_ini: bool = False  # write `redis = URL` into every role's section
    stale_after: int = C.WATCHDOG_AFTER
    pull_workers: int = 4
    cmos_workers: int = 2
    base_workers: int = 2

    @property
    def ini(self):
        return os.path.join(self.etc, "minard.ini")

    @property
    def static_dir(self):
        return os.path.join(self.repo, "minard", "static") + "/"

    @property
    def supervisor_auth(self):
        return os.path.join(self.etc, "supervisord-auth.conf")

    @property
    def supervisorctl_conf(self):
        return os.path.join(self.etc, "supervisorctl.conf")

    @property
    def redis_url(self):
        return "redis://127.0.0.1:%d/0" % self.ports["redis"]


PRODUCTION = Layout(
    kind="production",
    ports=dict(DEFAULT_PORTS),
    repo="/opt/minard",
    twistd="/opt/minard/.venv/bin/twistd",
    etc="/etc/minard",
    log_dir="/var/log/minard",
    daq_log_dir="/var/log/snoplus",
    programs="/etc/minard/programs.ini",
    redis_dir="/var/lib/redis",
    redis_pidfile="/run/redis/redis-server.pid",
    redis_logfile="/var/log/redis/redis-server.log",
    redis_maxmemory="2gb",
    supervisord_pidfile="/run/minard-supervisord.pid",
    nginx_pidfile="/run/nginx.pid",
    nginx_error_log="/var/log/nginx/error.log",
    nginx_access_log="/var/log/nginx/minard-access.log",
    nginx_user="www-data",
    program_user="minard",
    dispatcher_host="builder1.sp.snolab.ca",
    dataserver_host="daq1.sp.snolab.ca",
)


def local_layout(directory, ports=None, repo=REPO, twistd=None, stale_after=30, rate=1000.0):
    """The whole system under `directory` (e.g. ./run) for the current user, loopback only."""
    directory = os.path.abspath(directory)
    if twistd is None:
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    user = None
    if os.geteuid() == 0:  # nginx workers would otherwise drop to `nobody`
        user = getpass.getuser()
    return Layout(
        kind="local",
        ports=dict(ports or DEFAULT_PORTS),
        repo=repo,
        twistd=twistd,
        etc=os.path.join(directory, "etc"),
        log_dir=os.path.join(directory, "log", "minard"),
        daq_log_dir=os.path.join(directory, "log", "snoplus"),
        programs=os.path.join(repo, "etc", "programs.ini"),
        redis_dir=os.path.join(directory, "redis"),
        redis_pidfile=os.path.join(directory, "redis", "redis-server.pid"),
        redis_logfile="",
        redis_maxmemory="2gb",
        supervisord_pidfile=os.path.join(directory, "supervisord.pid"),
        nginx_pidfile=os.path.join(directory, "nginx", "nginx.pid"),
        nginx_error_log="stderr",
        nginx_access_log=os.path.join(directory, "log", "nginx-access.log"),
        nginx_user=user,
        nginx_temp_dir=os.path.join(directory, "nginx"),
        nginx_listen_address="127.0.0.1:",
        log_server_interface="127.0.0.1",
        simulator_autostart=True,
        simulator_rate=rate,
        infra=True,
        redis_bin=shutil.which("redis-server") or "/usr/bin/redis-server",
        nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx",
        redis_in_ini=True,
        stale_after=stale_after,
    )


def _header(layout, what, comment="#"):
    if layout.kind == "production":
        lines = ["%s, production. Generated by `python -m minard.deploy production etc`" % what,
                 "from minard/deploy.py: edit there and regenerate (tests/test_deploy.py checks"
                 " that this",
                 "file is that render). Installation: README.md, \"Production layout\"."]
    else:
        lines = ["%s, local system (scripts/run-local), rendered by minard/deploy.py." % what]
    return "\n".join("%s %s" % (comment, line) for line in lines) + "\n"


# -- supervisord ------------------------------------------------------------------------

def _program(layout, name, role, args="", numprocs=1, priority=100, autostart=True):
    command = "%s -n --pidfile= --logfile=- minard --role=%s --config %s" % (
        layout.twistd, role, layout.ini)
    if args:
        command += " " + args
    lines = ["[program:%s]" % name, "command = %s" % command]
    if numprocs > 1:
        lines += ["process_name = %(program_name)s-%(process_num)d",
                  "numprocs = %d" % numprocs]
    lines += [
        "directory = %s" % layout.repo,
        'environment = PYTHONPATH="%s",PYTHONUNBUFFERED="1"' % layout.repo,
    ]
    if layout.program_user:
        lines.append("user = %s" % layout.program_user)
    lines += [
        "priority = %d" % priority,
        "autostart = %s" % ("true" if autostart else "false"),
        "autorestart = true",
        "startsecs = 3",
        "startretries = 1000",
        "stopsignal = TERM",
        "stopwaitsecs = %d" % C.STOP_WAIT_SECONDS,
        "stopasgroup = true",
        "killasgroup = true",
        "redirect_stderr = true",
        "stdout_logfile = %s" % os.path.join(
            layout.log_dir, "%(program_name)s-%(process_num)d.log" if numprocs > 1
            else "%(program_name)s.log"),
        "stdout_logfile_maxbytes = 20MB",
        "stdout_logfile_backups = 5",
    ]
    return "\n".join(lines) + "\n"


def role_programs(layout):
    """(program name, role, extra arguments, numprocs, priority, autostart) of every role.

    The priorities order the programs inside the group (log server, web, simulator, pull
    side, push side); the group as a whole starts after Redis and stops before it
    (GROUP_PRIORITY). Every role reconnects with backoff, so the order is not load-bearing.
    """
    p = layout.ports
    return [
        ("log-server", "log-server", "", 1, 100, True),
        ("web", "web", "", 1, 110, True),
        ("simulator", "simulator", "", 1, 120, layout.simulator_autostart),
        ("dispatch-pull", "dispatch-pull", "--name dispatch-pull-%(process_num)d",
         layout.pull_workers, 200, True),
        ("data-consumer-cmos", "data-consumer", "--port %d" % p["cmos"],
         layout.cmos_workers, 210, True),
        ("data-consumer-base", "data-consumer", "--port %d" % p["base"],
         layout.base_workers, 210, True),
        ("dispatch-push", "dispatch-push", "", 1, 300, True),
        ("data-producer", "data-producer", "", 1, 310, True),
    ]


def process_names(layout):
    """The supervisord process names (`group:name`) of every program of the layout."""
    names = []
    for name, _role, _args, numprocs, _prio, autostart in role_programs(layout):
        if layout.kind == "production" and name == "simulator":
            continue  # not in the group (started by hand, for tests without a detector)
        if numprocs > 1:
            names += ["%s:%s-%d" % (GROUP, name, i) for i in range(numprocs)]
        else:
            names.append("%s:%s" % (GROUP, name))
    if layout.kind == "production":
        names.append("simulator")
    if layout.infra:
        names += ["redis", "nginx"]
    return names


def render_supervisord(layout):
    p = layout.ports
    parts = [_header(layout, "supervisord: every minard role", ";"), """
[supervisord]
logfile = {log}/supervisord.log
logfile_maxbytes = 50MB
logfile_backups = 10
loglevel = info
pidfile = {pidfile}
childlogdir = {log}
nodaemon = {nodaemon}
minfds = 4096
umask = 022
identifier = minard

; The inet server answers on loopback only, and only with a password. The password below
; can never match (it is not a SHA-1 hex digest): the real one, as {{SHA}}<sha1 hex>,
; comes from the include. Without that file nobody can log in.
[inet_http_server]
port = 127.0.0.1:{sup}
username = {sup_user}
password = {{SHA}}unset-see-{auth_name}

[include]
files = {auth}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

; supervisorctl needs the password too: use `supervisorctl -c {ctl}` (scripts/minard-ctl).
[supervisorctl]
serverurl = http://127.0.0.1:{sup}
username = {sup_user}
""".format(log=layout.log_dir, pidfile=layout.supervisord_pidfile,
           nodaemon="true" if layout.nodaemon else "false", sup=p["supervisor"],
           sup_user=SUPERVISOR_USER, auth=layout.supervisor_auth,
           auth_name=os.path.basename(layout.supervisor_auth), ctl=layout.supervisorctl_conf)]
    members = []
    for name, role, args, numprocs, priority, autostart in role_programs(layout):
        parts.append("\n" + _program(layout, name, role, args, numprocs, priority, autostart))
        if not (layout.kind == "production" and name == "simulator"):
            members.append(name)
    parts.append("\n[group:%s]\nprograms = %s\npriority = %d\n"
                 % (GROUP, ",".join(members), GROUP_PRIORITY))
    if layout.infra:
        parts.append(render_infra_programs(layout))
    return "".join(parts)


def render_infra_programs(layout):
    """Redis and nginx as programs of the local supervisord (production: system services).
    Not in a group: each is stopped on its own, nginx before the roles, Redis after them."""
    common = ("autostart = true\nautorestart = true\nstartsecs = 1\nstartretries = 100\n"
              "stopsignal = TERM\nstopwaitsecs = 30\nredirect_stderr = true\n"
              "stdout_logfile_maxbytes = 20MB\nstdout_logfile_backups = 2\n")
    nginx_conf = os.path.join(layout.etc, "nginx.conf")
    return """
; Redis starts first and stops last (the pull workers flush into it when they stop),
; nginx starts last and stops first.
[program:redis]
command = {redis} {etc}/redis.conf
priority = 10
{common}stdout_logfile = {log}/redis.log

[program:nginx]
command = {nginx} -p {prefix} -e stderr -c {conf}
priority = 900
{common}stdout_logfile = {log}/nginx.log
""".format(redis=layout.redis_bin, etc=layout.etc, common=common, log=layout.log_dir,
           nginx=layout.nginx_bin, prefix=layout.nginx_temp_dir + "/", conf=nginx_conf)


def render_supervisor_secrets(layout, password):
    """(supervisord-auth.conf, supervisorctl.conf) texts for a supervisord password."""
    digest = hashlib.sha1(password.encode("utf-8")).hexdigest()
    auth = ("; supervisord inet server password (SHA-1 of it); keep this file root-only (0600)\n"
            "[inet_http_server]\nusername = %s\npassword = {SHA}%s\n" % (SUPERVISOR_USER, digest))
    ctl = ("; supervisorctl -c %s ...   (keep this file root-only, 0600)\n"
           "[supervisorctl]\nserverurl = http://127.0.0.1:%d\nusername = %s\npassword = %s\n"
           % (layout.supervisorctl_conf, layout.ports["supervisor"], SUPERVISOR_USER, password))
    return auth, ctl


# -- nginx --------------------------------------------------------------------------------

def render_nginx(layout):
    p = layout.ports
    headers = "".join('        add_header %s "%s" always;\n' % (name, value)
                      for name, value in SECURITY_HEADERS)
    hidden = "".join("        proxy_hide_header %s;\n" % name for name, _ in SECURITY_HEADERS)
    top = []
    if layout.nginx_user:
        top.append("user %s;" % layout.nginx_user)
    top.append("worker_processes 2;")
    top.append("pid %s;" % layout.nginx_pidfile)
    top.append("error_log %s warn;" % layout.nginx_error_log)
    if layout.kind == "local":
        top.append("daemon off;  # supervisord runs it")
    temp = ""
    if layout.nginx_temp_dir:
        temp = "".join("    %s_temp_path %s;\n" % (kind, os.path.join(layout.nginx_temp_dir, kind))
                       for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
    return _header(layout, "nginx in front of minard") + """
{top}

events {{
    worker_connections 4096;  # every open dashboard holds one /stream connection
}}

http {{
    types {{
        text/html html;
        text/css css;
        application/javascript js mjs;
        application/json json map;
        image/svg+xml svg;
        image/png png;
        image/x-icon ico;
        font/woff2 woff2;
        text/plain txt;
    }}
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    server_tokens off;
    keepalive_timeout 65;
    access_log {access};
{temp}
    gzip on;
    gzip_types text/css application/javascript application/json image/svg+xml;

    upstream minard_web {{
        server 127.0.0.1:{web};
        keepalive 16;
    }}
    upstream minard_log {{
        server 127.0.0.1:{logport};
        keepalive 8;
    }}

    server {{
        listen {listen}{nginx};
        server_name _;
        autoindex off;  # no directory listings anywhere (the original listed its logs)
        client_max_body_size 16k;  # the main site takes no uploads

{headers}{hidden}
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        proxy_set_header X-Real-IP $remote_addr;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Forwarded-Prefix {prefix};

        location = / {{
            return 302 {prefix}/;
        }}
        location = {prefix} {{
            return 301 {prefix}/;
        }}

        # Static files straight from the checkout (the pages link {prefix}/static/...).
        location {prefix}/static/ {{
            alias {static};
            expires 1h;
        }}

        # The logging server: heartbeats and log records of the DAQ programs. Its body
        # limit is the log server's own ({body} bytes: a {message} byte message, form-encoded).
        location = {prefix}/log {{
            client_max_body_size {body};
            proxy_pass http://minard_log/log;
        }}
        location = {prefix}/heartbeat {{
            client_max_body_size {body};
            proxy_pass http://minard_log/heartbeat;
        }}

        # Server-sent events: unbuffered, and held open as long as the page is.
        location = {prefix}/stream {{
            proxy_pass http://minard_web/stream;
            proxy_buffering off;
            proxy_cache off;
            gzip off;
            proxy_read_timeout {stream_timeout};
            proxy_send_timeout {stream_timeout};
        }}

        # The main site, prefix stripped (every link in its pages is relative).
        location {prefix}/ {{
            proxy_pass http://minard_web/;
        }}

        location / {{
            return 404;
        }}
    }}
}}
""".format(top="\n".join(top), access=layout.nginx_access_log, temp=temp, web=p["web"],
           logport=p["log"], listen=layout.nginx_listen_address, nginx=p["nginx"],
           headers=headers, hidden=hidden, prefix=PREFIX, static=layout.static_dir,
           body=C.MAX_BODY_BYTES, message=C.MAX_MESSAGE_BYTES,
           stream_timeout=STREAM_READ_TIMEOUT)


# -- Redis --------------------------------------------------------------------------------

def render_redis(layout):
    production = layout.kind == "production"
    return _header(layout, "Redis for minard") + """
# Loopback only, protected mode on. Programs on other machines (the L2 client) reach it
# through an SSH tunnel or stunnel, never an open port.
port {port}
bind 127.0.0.1 -::1
protected-mode yes
tcp-keepalive 300
timeout 0

daemonize no
supervised {supervised}
pidfile {pidfile}
loglevel notice
logfile "{logfile}"
databases 16

# Snapshots as in the original: after 900 s if 1 key changed, 300 s if 10, 60 s if 10000.
dir {dir}
dbfilename dump.rdb
save 900 1
save 300 10
save 60 10000
rdbcompression yes
rdbchecksum yes
stop-writes-on-bgsave-error yes
appendonly no

# Memory: nothing of minard's may ever be evicted (an evicted second reads as rate 0, an
# evicted alarm is a lost alarm), so Redis refuses writes when full instead (noeviction),
# and maxmemory is a budget that SPEC's retention cannot reach. Per-channel data are
# packed float32 arrays, ~48 KB per finalised bucket in Redis: 3 quantities x 3 intervals
# (5 s, 60 s, 1 day) x 1200 buckets = ~0.5 GB, plus the scalar series, open partials and
# nhit histograms: ~0.7 GB at steady state (bench/README.md, bench_store.py). The log
# server's watchdog raises an alarm at 80 % of maxmemory; /metrics exports the usage.
maxmemory {maxmemory}
maxmemory-policy noeviction
lazyfree-lazy-eviction yes
lazyfree-lazy-expire yes
""".format(port=layout.ports["redis"], supervised="auto" if production else "no",
           pidfile=layout.redis_pidfile, logfile=layout.redis_logfile, dir=layout.redis_dir,
           maxmemory=layout.redis_maxmemory)


# -- minard.ini -----------------------------------------------------------------------------

def render_ini(layout):
    p = layout.ports
    redis = "redis = %s\n" % layout.redis_url if layout.redis_in_ini else ""

    def section(name, body):
        return "\n[%s]\n%s%s" % (name, redis, body)

    log_listen = "tcp:%d" % p["log"]
    if layout.log_server_interface:
        log_listen += ":interface=%s" % layout.log_server_interface
    out = [_header(layout, "minard: the settings of every role"), """#
# twistd -n minard --role=ROLE --config {ini}: the role's section, keys = its long options
# (list them with `twistd -n minard --role=ROLE --help`); the command line wins. supervisord
# passes what differs per process (--name of a pull worker, --port of a consumer).
# [monitor]: each process's own heartbeat to the log server; [watchdog]: stale-data alarms.
""".format(ini=layout.ini)]
    out.append(section("dispatch-push", (
        "# the ControlHost dispatcher of the event builder\n"
        "host = {host}\nport = {port}\ndialect = caspur\nsubscription = w RAWDATA w RECHDR\n"
        "zmq = tcp://127.0.0.1:{events}\n").format(
            host=layout.dispatcher_host, port=p["dispatcher"], events=p["events"])))
    out.append(section("dispatch-pull", "zmq = tcp://127.0.0.1:%d\n" % p["events"]))
    out.append(section("data-producer", (
        "# the data server (CMOS rates and base currents)\n"
        "host = {host}\nport = {port}\ncmos-zmq = tcp://127.0.0.1:{cmos}\n"
        "base-zmq = tcp://127.0.0.1:{base}\n").format(
            host=layout.dataserver_host, port=p["dataserver"], cmos=p["cmos"], base=p["base"])))
    out.append(section("data-consumer", "# --port %d (CMOS) or %d (BASE) per program\n"
                       % (p["cmos"], p["base"])))
    out.append(section("web", (
        "# loopback: the world sees it through nginx on {nginx} under /monitoring/\n"
        "listen = tcp:{web}:interface=127.0.0.1\nlog-dir = {daq}\nprograms = {programs}\n"
    ).format(nginx=p["nginx"], web=p["web"], daq=layout.daq_log_dir,
             programs=layout.programs)))
    out.append(section("log-server", (
        "{note}listen = {listen}\nlog-dir = {daq}\nprograms = {programs}\n"
        "auth-file = {auth}\n").format(
            note=("# every interface: DAQ machines post `curl -u ... host:%d/heartbeat`\n"
                  % p["log"]) if not layout.log_server_interface else "",
            listen=log_listen, daq=layout.daq_log_dir, programs=layout.programs,
            auth=os.path.join(layout.etc, "users"))))
    out.append(section("simulator", (
        "# a synthetic detector (scripts/run-local; in production only for tests)\n"
        "dispatcher-listen = tcp:{disp}:interface=127.0.0.1\n"
        "data-listen = tcp:{data}:interface=127.0.0.1\nrate = {rate:g}\n").format(
            disp=p["dispatcher"], data=p["dataserver"], rate=layout.simulator_rate)))
    out.append((
        "\n[monitor]\n# every process posts its own heartbeat (and its warnings) to the log server\n"
        "url = http://127.0.0.1:{log}\nuser = {user}\npassword-file = {pw}\n"
        "interval = {interval:g}\n").format(
            log=p["log"], user=MONITOR_USER, pw=os.path.join(layout.etc, "monitor.password"),
            interval=C.HEARTBEAT_INTERVAL))
    out.append((
        "\n[watchdog]\n# in the log-server: one alarm when events, pull-worker heartbeats or the\n"
        "# dispatcher link stay away this long, one 'cleared' alarm when they are back\n"
        "enabled = yes\nafter-seconds = {after}\n").format(after=int(layout.stale_after)))
    return "".join(out)


PRODUCTION_FILES = {
    "supervisord.conf": render_supervisord,
    "nginx.conf": render_nginx,
    "redis.conf": render_redis,
    "minard.ini": render_ini,
}


def write_production(directory):
    for name, render in PRODUCTION_FILES.items():
        with open(os.path.join(directory, name), "w", encoding="utf-8") as f:
            f.write(render(PRODUCTION))


# -- the local system ---------------------------------------------------------------------

class DeployError(Exception):
    """A problem the user must fix; str() says what and how."""


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


# -- command line -------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        self.exit(1, "%s: error: %s\n" % (self.prog, message))


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


def main(argv=None):
    parser = _Parser(prog="python -m minard.deploy", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    prod = sub.add_parser("production", help="write the production files into DIR")
    prod.add_argument("dir")
    local = sub.add_parser("local", help="the local system (scripts/run-local)")
    local.add_argument("action", nargs="?", default="start", choices=("start", "stop", "status"))
    local.add_argument("--dir", default=os.path.join(REPO, "run"),
                       help="where configs, logs and data go (default ./run)")
    group = local.add_mutually_exclusive_group()
    group.add_argument("--port-offset", type=int, default=0,
                       help="add N to every port (8080 -> 8080+N ...)")
    group.add_argument("--auto-ports", action="store_true", help="use any free ports")
    local.add_argument("--detach", action="store_true",
                       help="return once the system is live (stop: scripts/run-local stop)")
    local.add_argument("--timeout", type=float, default=90,
                       help="seconds to wait for live data (default 90)")
    local.add_argument("--rate", type=float, default=1000.0,
                       help="simulated events per second (default 1000)")
    local.add_argument("--stale-after", type=int, default=30,
                       help="seconds before the watchdog raises a stale-data alarm (default 30)")
    args = parser.parse_args(argv)
    if args.command == "production":
        write_production(args.dir)
        return 0
    if args.timeout <= 0 or args.rate <= 0 or not 1 <= args.stale_after <= 86400:
        parser.error("--timeout and --rate must be positive, --stale-after 1-86400")
    try:
        return _local_main(args)
    except DeployError as e:
        sys.stderr.write("run-local: %s\n" % (e,))
        return 1


if __name__ == "__main__":
    sys.exit(main())
