"""`log-server`: the logging server of the DAQ programs (SPEC §5.2), its own heartbeat
and log (program `log`, written straight to Redis and its log file), the watchdog
(stale data, and programs of programs.ini that stop posting heartbeats) and channel
health (minard/health/: `[health]` of the --config file; one instance, here).

    twistd -n minard --role=log-server --listen tcp:8081 --auth-file /etc/minard/users \\
        --log-dir /var/log/snoplus --programs etc/programs.ini

Its connection caps come from an optional `[connections]` section of the --config file:
`max` (connections at once; default and ceiling: the file-descriptor limit, raised to its
hard limit at start, minus LOG_SERVER_FD_RESERVE, and at most
LOG_SERVER_MAX_CONNECTIONS), `per-address` (connections of one remote address before one
authenticates, default CONNECTIONS_PER_ADDRESS) and `request-seconds` (the request
deadline, default REQUEST_DEADLINE; keep it above the client library's
MONITOR_IDLE_CONNECTION, or kept-alive connections may be closed under a request). Keep
the listen queue of --listen at Twisted's default (see LOG_SERVER_FD_RESERVE).
"""
import os
import resource

from twisted.application.internet import StreamServerEndpointService, TimerService
from twisted.internet import defer, endpoints
from twisted.logger import Logger

from minard import constants as C
from minard.clock import wall as wall_clock
from minard.auth import AuthFileError, Authenticator
from minard.programs import ProgramsError, load_programs
from minard.services.common import ProcessBase
from minard.store import logserver as store
from minard.tap import OptionError
from minard.health.config import parse_section as parse_health
from minard.health.service import HealthService
from minard.watchdog import Watchdog, parse_section
from minard.monitor import LogForwarder
from minard.web.logsite import OwnLog, make_log_site

#: The log server's own entry in programs.ini.
OWN_PROGRAM = "log"


class OwnHeartbeat(TimerService):
    """heartbeat:log every few seconds, straight to Redis (posting to itself over HTTP
    would add nothing)."""

    log = Logger()

    def __init__(self, redis, program, clock, stats, interval=C.HEARTBEAT_INTERVAL,
                 wall=None):
        TimerService.__init__(self, interval, self.beat)
        self.clock = clock
        self.wall = wall or clock.seconds  # the heartbeat's time (minard/clock.py)
        self.redis = redis
        self.program = program
        self.stats = stats
        self._pending = None

    def beat(self):
        if self._pending is not None:
            return
        d = self._pending = defer.maybeDeferred(
            store.post_heartbeat, self.redis, self.program.name, "ok", self.program.expire,
            self.wall())
        d.addErrback(lambda f: self.stats.incr("heartbeat_errors"))
        d.addBoth(self._done)  # may run at once: _pending is None again

    def _done(self, _):
        self._pending = None


CONNECTION_KEYS = {"max", "per-address", "request-seconds"}


def descriptor_budget():
    """Connections the process can hold: its file-descriptor limit (the soft limit is
    raised towards the hard one first) minus LOG_SERVER_FD_RESERVE, at most
    LOG_SERVER_MAX_CONNECTIONS. Kept below the limit, accept() never fails: the issue's
    flood reset every heartbeat once the process ran out of descriptors."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = C.LOG_SERVER_MAX_CONNECTIONS + C.LOG_SERVER_FD_RESERVE
        target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
        if target > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                soft = target
            except (ValueError, OSError):
                pass
    return max(1, min(C.LOG_SERVER_MAX_CONNECTIONS, soft - C.LOG_SERVER_FD_RESERVE))


def parse_connections(section, budget):
    """(max, per_address, request_seconds) from a [connections] section; ValueError."""
    section = section or {}
    unknown = set(section) - CONNECTION_KEYS
    if unknown:
        raise ValueError("[connections] unknown key %r (known: %s)"
                         % (sorted(unknown)[0], ", ".join(sorted(CONNECTION_KEYS))))
    values = []
    for key, default, low, high, kind in (
            ("max", budget, 1, budget, int),
            ("per-address", C.CONNECTIONS_PER_ADDRESS, 1, budget, int),
            ("request-seconds", C.REQUEST_DEADLINE, 0.1, 3600, float)):
        try:
            value = kind(section.get(key, default))
        except (TypeError, ValueError):
            raise ValueError("[connections] %s must be a number" % (key,))
        if not low <= value <= high:
            raise ValueError("[connections] %s must be between %g and %g (the file-"
                             "descriptor limit bounds max)" % (key, low, high))
        values.append(value)
    return tuple(values)


def make_service(options, reactor):
    if not options.get("auth-file"):
        raise OptionError("--auth-file is required for role log-server (writes need "
                          "credentials; create the file with: minard-passwd FILE USER)")
    try:
        auth = Authenticator(options["auth-file"])
    except AuthFileError as e:
        raise OptionError("--auth-file: %s" % (e,))
    if not auth.users:
        raise OptionError("--auth-file: %s has no users (add one with minard-passwd %s USER)"
                          % (options["auth-file"], options["auth-file"]))
    try:
        programs = load_programs(options["programs"])
    except ProgramsError as e:
        raise OptionError("--programs: %s" % (e,))
    sections = options.get("config-sections") or {}
    try:
        watchdog_enabled, watchdog_after = parse_section(sections.get("watchdog"))
        health = parse_health(sections.get("health"))
        max_connections, per_address, request_seconds = parse_connections(
            sections.get("connections"), descriptor_budget())
    except ValueError as e:
        raise OptionError(str(e))
    try:
        os.makedirs(options["log-dir"], exist_ok=True)
    except OSError as e:
        raise OptionError("--log-dir: cannot create %s: %s" % (options["log-dir"], e.strerror))
    if not os.access(options["log-dir"], os.W_OK):
        raise OptionError("--log-dir: %s is not writable" % (options["log-dir"],))

    base = ProcessBase(options, "log-server", reply_timeout=C.SITE_REPLY_TIMEOUT)
    site = make_log_site(base.redis, programs, options["log-dir"], auth, clock=reactor,
                         stats=base.stats, max_connections=max_connections,
                         per_address=per_address, request_deadline=request_seconds)
    site.wall = wall_clock  # stamps on the wall clock, timers on the monotonic one
    endpoint = endpoints.serverFromString(reactor, options["listen"])
    listener = StreamServerEndpointService(endpoint, site.site())
    listener._raiseSynchronously = True  # a port in use stops the start, not just logs
    listener.setServiceParent(base.service)
    if OWN_PROGRAM in programs:
        OwnHeartbeat(base.redis, programs[OWN_PROGRAM], reactor,
                     base.stats, wall=wall_clock).setServiceParent(base.service)
        # its own warnings, errors and watchdog alarms on /view_log?name=log
        LogForwarder(None, OWN_PROGRAM, sender=OwnLog(site, OWN_PROGRAM), clock=reactor,
                     rate=C.OWN_LOG_RATE, burst=C.OWN_LOG_BURST).setServiceParent(base.service)
    if watchdog_enabled:
        Watchdog(base.redis, after=watchdog_after, clock=reactor, stats=base.stats,
                 wall=wall_clock, programs=programs).setServiceParent(base.service)
    if health.enabled:  # channel health (minard/health/): one instance, here
        HealthService(base.redis, health, clock=reactor, wall=wall_clock,
                      stats=base.stats).setServiceParent(base.service)
    return base.service
