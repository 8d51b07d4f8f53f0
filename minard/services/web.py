"""The `web` role: the main site (SPEC §5.1, §6) on `--listen` (tcp:8080, ssl:8443:...)."""
import socket
import sys

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from minard import constants as C
from minard.clock import wall as wall_clock
from minard.programs import ProgramsError, load_programs
from minard.services.common import ProcessBase
from minard.store.connection import connect, parse_redis_url
from minard.store.migrate import Migration, summary
from minard.store.replica import ReplicaLag
from minard.web.site import Site


class StreamShutdown(Service):
    """Ends every /stream response when the process stops (clients reconnect elsewhere)."""

    def __init__(self, hub):
        self.hub = hub

    def stopService(self):
        self.hub.close_all()
        return Service.stopService(self)


class StoreMigration(Service):
    """Converts per-channel data of the old Redis layout once, in the background, so an
    upgraded system shows its history (store/migrate.py). Errors are logged, never fatal."""

    log = Logger()
    migration = done = None

    def __init__(self, redis):
        self.redis = redis

    def startService(self):
        Service.startService(self)
        self.migration = Migration(self.redis, self.log)
        self.done = self.migration.run()
        self.done.addCallbacks(
            lambda counts: self.log.info("store migration: {summary}", summary=summary(counts)),
            lambda f: None if self.migration.stopped else self.log.failure(
                "store migration failed (run minard-migrate-store)", f))

    def stopService(self):
        if self.migration is not None:
            self.migration.stop()
        return Service.stopService(self)


def make_service(options, reactor):
    # a Redis that is connected but frozen is a 503 within seconds, not a 10-s hang
    base = ProcessBase(options, "web", heartbeat_name="minard-web",
                       reply_timeout=C.SITE_REPLY_TIMEOUT)
    try:
        programs = load_programs(options["programs"])
    except ProgramsError as e:  # a usage error, not a traceback
        sys.stderr.write("minard: error: --programs: %s\n" % (e,))
        raise SystemExit(1)
    replica = None
    if options.get("redis-replica"):
        replica = connect(options["redis-replica"], reply_timeout=C.SITE_REPLY_TIMEOUT)
    auth = None
    if options.get("auth-file"):  # who may mask channels (web/health.py)
        from minard.auth import AuthFileError, Authenticator
        try:
            auth = Authenticator(options["auth-file"])
        except AuthFileError as e:
            sys.stderr.write("minard: error: --auth-file: %s\n" % (e,))
            raise SystemExit(1)
    site = Site(base.redis, programs, options["log-dir"], clock=reactor, stats=base.stats,
                wall=wall_clock, replica=replica, auth=auth)  # timers: monotonic clock
    if replica is not None:
        ident = "web-%s-%s" % (socket.gethostname(), options["listen"])
        site.replica_lag = site.hub.replica_lag = ReplicaLag(base.redis, replica, ident,
                                                             wall_clock)
        site.replica_lag.setServiceParent(base.service)
    factory = site.factory()  # connection caps per peer address (site.WebFactory)
    endpoint = serverFromString(reactor, options["listen"])
    listener = StreamServerEndpointService(endpoint, factory)
    listener._raiseSynchronously = True
    listener.setServiceParent(base.service)
    StreamShutdown(site.hub).setServiceParent(base.service)
    if parse_redis_url(options["redis"])["username"] is None:
        StoreMigration(base.redis).setServiceParent(base.service)
    else:  # an ACL user (store/acl.py) may not rewrite the store: the administrator may
        Logger().info("Redis user {user}: an old store layout is converted by "
                      "minard-migrate-store (with the administrator's URL), not by web",
                      user=parse_redis_url(options["redis"])["username"])
    base.service.site = site  # for tests and introspection
    base.service.factory = factory
    base.service.redis = base.redis
    return base.service
