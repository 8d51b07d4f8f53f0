"""Redis ACL users per role (minard/store/acl.py, minard-redis-acl). The end-to-end proof
that each role runs with its user is tests/test_multihost.py; here: the rules as Redis
reads them, and the command's files."""
import os
import stat
import tempfile

from twisted.trial import unittest

from minard.store import acl
from tests.support import RedisServer, ReplyError, SyncRedis


class RulesTests(unittest.TestCase):
    def setUp(self):
        self.passwords = acl.new_passwords()
        self.dir = tempfile.mkdtemp()
        path = os.path.join(self.dir, "users.acl")
        with open(path, "w") as f:
            f.write(acl.acl_file(self.passwords, default_password="admin"))
        self.redis = RedisServer(password="admin", extra_args=["--aclfile", path]).start()
        self.addCleanup(self.redis.cleanup)

    def as_role(self, role):
        return SyncRedis(self.redis.port, user=role, password=self.passwords[role])

    def test_who_may_write_what(self):
        allowed = [("dispatch-pull", ("HINCRBY", "ts:1:5:trig", "TOTAL", "1")),
                   ("dispatch-pull", ("SET", "minard:chan:occupancy:5:1", "x")),
                   ("data-consumer", ("HSET", "cmos:state:3", "1", "x")),
                   ("log-server", ("SET", "heartbeat:builder", "ok")),
                   ("log-server", ("SET", "alarms:1", "{}")),
                   ("web", ("HGET", "ts:1:5:trig", "TOTAL")),
                   ("web", ("HSET", "minard:stats:web", "requests", "1")),
                   ("dispatch-push", ("SET", "dispatcher", "builder1")),
                   ("web", ("HSET", "minard:health:masks", "1124", "{}"))]
        for role, command in allowed:
            self.as_role(role).command(*command)
        refused = [("web", ("SET", "ts:1:5:trig", "x")),
                   ("web", ("SET", "heartbeat:builder", "ok")),
                   ("web", ("SET", "minard:health:findings", "[]")),
                   ("log-server", ("HINCRBY", "ts:1:5:trig", "TOTAL", "1")),
                   ("log-server", ("SET", "minard:chan:occupancy:5:1", "x")),
                   ("data-consumer", ("SET", "alarms:1", "{}")),
                   ("data-consumer", ("SET", "heartbeat:builder", "ok")),
                   ("dispatch-push", ("SET", "ts:1:5:trig", "x")),
                   ("data-producer", ("HGET", "ts:1:5:trig", "TOTAL")),
                   ("dispatch-pull", ("FLUSHALL",)),
                   ("dispatch-pull", ("CONFIG", "SET", "maxmemory", "1")),
                   ("web", ("KEYS", "*")),
                   ("replica", ("HGET", "ts:1:5:trig", "TOTAL"))]
        for role, command in refused:
            with self.assertRaises(ReplyError, msg="%s may %s" % (role, command)) as e:
                self.as_role(role).command(*command)
            self.assertIn("NOPERM", str(e.exception))

    def test_default_user_off_without_admin_password(self):
        text = acl.acl_file(self.passwords)
        self.assertIn("user default off", text)
        self.assertNotIn("#", text.split("\n")[0].split()[0])  # no comment line


class CommandTests(unittest.TestCase):
    def test_writes_private_files_and_refuses_to_overwrite(self):
        d = tempfile.mkdtemp()
        a, u = os.path.join(d, "users.acl"), os.path.join(d, "redis-urls.ini")
        self.assertEqual(acl.main(["--acl-file", a, "--urls", u, "--host", "10.0.0.1"]), 0)
        for path in (a, u):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        text = open(u).read()
        self.assertIn("[dispatch-pull]\nredis = redis://dispatch-pull:", text)
        self.assertIn("@10.0.0.1:6379/0", text)
        before = open(a).read()
        self.assertEqual(acl.main(["--acl-file", a, "--urls", u, "--host", "h"]), 1)
        self.assertEqual(open(a).read(), before)
        self.assertEqual(acl.main(["--acl-file", a, "--urls", u, "--host", "h",
                                   "--ca", "/no/such"]), 2)
