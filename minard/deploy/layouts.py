"""Layouts: where everything of one minard host lives and which ports it uses (`Layout`),
the production host (`PRODUCTION`), the local system under ./run (`local_layout`), and
which programs a layout runs under supervisord.

The multi-host layouts (a push host, worker hosts, a web host) are in
minard/deploy/multihost.py; each of their hosts is a `Layout` too.
"""
import dataclasses
import getpass
import os
import shutil
import sys
from urllib.parse import urlsplit

from minard import constants as C

#: The checkout: minard/static, PYTHONPATH and the working directory of the roles.
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PREFIX = "/monitoring"  # the URL prefix of the site behind nginx (as the original)
GROUP = "minard"  # the supervisord group of every role
#: supervisord stops groups one after the other, highest priority number first, and
#: waits for each: nginx (900), then every role (the group, 500), then Redis (10) last,
#: after the pull workers have flushed into it. (Programs inside one group stop together.)
GROUP_PRIORITY = 500
SUPERVISOR_USER = "admin"  # user of supervisord's inet server
MONITOR_USER = "minard"  # the log-server user the minard processes post heartbeats as
#: nginx's HTTPS port on the web host of a multi-host layout: the other hosts' minard
#: processes post their heartbeats and logs to the log server through it (TLS checked
#: against the layout's CA), and screens may use it too.
NGINX_TLS_PORT = C.NGINX_TLS_PORT

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


class DeployError(Exception):
    """A problem the user must fix; str() says what and how."""


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where everything of one minard host lives and which ports it uses."""

    kind: str  # "production", "local" or "multi-host" (one host of a multi-host layout)
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
    #: the simulator posts the heartbeats of the DAQ programs (stand_in_programs)
    simulator_stand_ins: bool = False
    infra: bool = False  # run Redis and nginx under supervisord too (local system)
    redis_bin: str = "/usr/bin/redis-server"
    nginx_bin: str = "/usr/sbin/nginx"
    redis_in_ini: bool = False  # write `redis = URL` into every role's section
    stale_after: int = C.WATCHDOG_AFTER
    pull_workers: int = 4
    cmos_workers: int = 2
    base_workers: int = 2
    #: files of a multi-host layout (minard/deploy/multihost.py): the TLS certificates
    #: (readable by Redis and nginx: not under etc), Redis's ACL file, the CURVE keys
    tls_dir: str = "/etc/ssl/minard"
    redis_acl_file: str = "/etc/redis/minard-users.acl"
    #: where a host's redis.conf and nginx.conf are installed (system services)
    redis_conf: str = "/etc/redis/redis.conf"
    nginx_conf: str = "/etc/nginx/nginx.conf"

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
    def curve_dir(self):
        return os.path.join(self.etc, "curve")

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
        simulator_stand_ins=True,
        infra=True,
        redis_bin=shutil.which("redis-server") or "/usr/bin/redis-server",
        nginx_bin=shutil.which("nginx") or "/usr/sbin/nginx",
        redis_in_ini=True,
        stale_after=stale_after,
    )


# -- the programs of a layout ---------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Program:
    """One [program:NAME] of supervisord.conf."""

    name: str
    role: str
    args: str = ""
    numprocs: int = 1
    priority: int = 100
    autostart: bool = True
    #: in the `minard` group (the production simulator is not: it is started by hand)
    in_group: bool = True
    #: the text between the program name and the process number of each process
    #: ("-B-" on worker host B of a multi-host layout: dispatch-pull-B-0); "-" otherwise
    infix: str = "-"

    @property
    def process_name(self):
        """supervisord's process_name (numprocs > 1)."""
        return "%(program_name)s" + self.infix + "%(process_num)d"

    def process_names(self):
        if self.numprocs > 1 or self.infix != "-":
            return ["%s%s%d" % (self.name, self.infix, i) for i in range(self.numprocs)]
        return [self.name]


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


def programs_of(layout):
    """The `Program`s of a one-host layout (production, local), in file order."""
    return [Program(name, role, args, numprocs, priority, autostart,
                    in_group=not (layout.kind == "production" and name == "simulator"))
            for name, role, args, numprocs, priority, autostart in role_programs(layout)]


def own_programs(layout):
    """The programs.ini names minard's own processes post their heartbeats under: the log
    server (`log`), web, push side, and each pull and consumer worker."""
    names = ["log", "minard-web", "minard-dispatch-push", "minard-data-producer"]
    names += ["dispatch-pull-%d" % i for i in range(layout.pull_workers)]
    names += ["data-consumer-cmos-%d" % i for i in range(layout.cmos_workers)]
    names += ["data-consumer-base-%d" % i for i in range(layout.base_workers)]
    return names


def stand_in_programs(layout):
    """The programs of layout.programs that minard does not run (the DAQ's), in file
    order: in the local system the simulator posts their heartbeats
    (minard/sim/programs.py), so that a fresh system shows every program OK."""
    from minard.programs import load_programs

    own = set(own_programs(layout))
    return [name for name in load_programs(layout.programs) if name not in own]


def supervisor_process_names(programs, infra=False):
    """The supervisord process names (`group:name`, or `name` outside the group) of
    `programs` (and Redis and nginx when supervisord runs them too)."""
    names = []
    for program in programs:
        if program.in_group:
            names += ["%s:%s" % (GROUP, name) for name in program.process_names()]
    names += [name for program in programs if not program.in_group
              for name in program.process_names()]
    if infra:
        names += ["redis", "nginx"]
    return names


def process_names(layout):
    """The supervisord process names (`group:name`) of every program of the layout."""
    return supervisor_process_names(programs_of(layout), layout.infra)
