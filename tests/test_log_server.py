"""The log-server role as a whole (minard/services/log_server.py)."""
import os
import sys
import tempfile

import treq
from twisted.internet import defer, utils
from twisted.trial import unittest

from minard.services import log_server
from minard.tap import OptionError
from tests.logserver_support import PROGRAMS_INI, basic, write_users
from tests.support import RedisTestMixin, free_port, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class MakeServiceTests(RedisTestMixin, unittest.TestCase):

    def options(self, **extra):
        self.tmp = tempfile.mkdtemp()
        self.port = free_port()
        options = {"role": "log-server", "redis": self.redis_server.url, "config": None,
                   "listen": "tcp:%d:interface=127.0.0.1" % self.port,
                   "log-dir": os.path.join(self.tmp, "logs"), "programs": PROGRAMS_INI,
                   "auth-file": write_users(self.tmp), "config-sections": {}}
        options.update(extra)
        return options

    def test_auth_file_is_required(self):
        from twisted.internet import reactor
        with self.assertRaises(OptionError) as cm:
            log_server.make_service(self.options(**{"auth-file": None}), reactor)
        self.assertIn("--auth-file is required", str(cm.exception))

    def test_bad_settings(self):
        from twisted.internet import reactor
        empty = os.path.join(tempfile.mkdtemp(), "empty")
        open(empty, "w").close()
        for extra in ({"auth-file": empty},
                      {"config-sections": {"watchdog": {"after-seconds": "soon"}}},
                      {"log-dir": "/proc/minard-cannot-create"}):
            self.assertRaises(OptionError, log_server.make_service, self.options(**extra),
                              reactor)

    @defer.inlineCallbacks
    def test_serves_and_beats(self):
        from twisted.internet import reactor
        service = log_server.make_service(self.options(), reactor)
        redis = [child.redis for child in service if hasattr(child, "redis")][0]
        self.addCleanup(redis.disconnect)  # runs after stopService (cleanups are LIFO)
        service.startService()
        self.addCleanup(service.stopService)
        yield wait_for(lambda: self.sync.command("GET", "heartbeat:log") == "ok")
        response = yield treq.post("http://127.0.0.1:%d/heartbeat" % self.port,
                                   data={"name": "xl3", "status": "ok"},
                                   headers={b"authorization": [basic()]}, persistent=False)
        body = yield treq.content(response)
        self.assertEqual((response.code, body), (200, b"ok\n"))
        self.assertEqual(self.sync.command("GET", "heartbeat:xl3"), "ok")
        yield wait_for(lambda: self.sync.hgetall("minard:stats:log-server").get("heartbeats")
                       == "1")


class CommandLineTests(unittest.TestCase):

    @defer.inlineCallbacks
    def test_missing_auth_file_is_a_usage_error(self):
        twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
        out, err, code = yield utils.getProcessOutputAndValue(
            twistd, ["-n", "--pidfile=", "minard", "--role=log-server",
                     "--listen", "tcp:%d:interface=127.0.0.1" % free_port(),
                     "--log-dir", tempfile.mkdtemp()],
            env=dict(os.environ, PYTHONPATH=ROOT), path=ROOT)
        self.assertEqual(code, 1, (out, err))
        lines = err.decode().strip().splitlines()
        self.assertEqual(len(lines), 1, err)
        self.assertIn("--auth-file is required", lines[0])
