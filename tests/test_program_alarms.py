"""Alarms for every program of programs.ini (minard/watchdog.py), acknowledgements stored
by the server for every screen (POST ack_alarm, GET alarm_acks), and the simulator's
stand-in heartbeats of the DAQ programs (minard/sim/programs.py) — against a real Redis,
the real main site and log server, and the real log-server role.
"""
import json
import os
import tempfile
import time

import treq
from twisted.internet import defer, task
from twisted.trial import unittest

from minard import constants as C
from minard import deploy, tap
from minard.programs import ProgramsError, load_programs
from minard.sim.programs import StandInError, parse_names, stand_in_service
from minard.stats import Stats
from minard.store import keys
from minard.watchdog import Watchdog
from minard.web.logsite import OwnLog
from tests.logserver_support import PASSWORD, USER, LogServerMixin, basic, write_users
from tests.support import RedisConnectionMixin, RoleProcess, free_port, wait_for
from tests.web_support import SiteTestMixin

START = 1_700_000_000
HERE = os.path.dirname(os.path.abspath(__file__))
PROGRAMS_INI = os.path.join(os.path.dirname(HERE), "etc", "programs.ini")


def write_programs(text):
    path = os.path.join(tempfile.mkdtemp(prefix="minard-programs-"), "programs.ini")
    with open(path, "w") as f:
        f.write(text)
    return path


def all_alarms(sync):
    count = int(sync.command("GET", "alarms:count") or 0)
    out = []
    for i in range(count):
        raw = sync.command("GET", "alarms:%d" % i)
        if raw is not None:
            out.append(json.loads(raw))
    return out


class ProgramsIniTests(unittest.TestCase):

    def test_the_shipped_file(self):
        programs = load_programs(PROGRAMS_INI)
        self.assertEqual(programs["builder"].alarm_level, C.ALARM_LEVEL)  # the default
        self.assertEqual(programs["PCA"].alarm_level, 30)

    def test_values(self):
        path = write_programs("[a]\nalarm-level = warning\n[b]\nalarm-level = 45\n"
                              "[c]\nalarm-level = off\n[d]\n[e]\nalarm-level = DANGER\n")
        levels = {n: p.alarm_level for n, p in load_programs(path).items()}
        self.assertEqual(levels, {"a": 30, "b": 45, "c": None, "d": 40, "e": 40})

    def test_errors_are_one_line(self):
        for text, reason in (("[a]\nalarm-level = loud\n", "alarm-level must be"),
                             ("[a]\nalarm-level = 0\n", "alarm-level must be"),
                             ("[a]\nalarm-level = 1001\n", "alarm-level must be"),
                             ("[a]\nalarm-level = -5\n", "alarm-level must be"),
                             ("[a]\nalarm_level = 30\n", "unknown key 'alarm_level'")):
            with self.assertRaises(ProgramsError) as cm:
                load_programs(write_programs(text))
            message = str(cm.exception)
            self.assertIn(reason, message)
            self.assertIn("[a]", message)
            self.assertEqual(len(message.splitlines()), 1, message)


class ProgramWatchTests(RedisConnectionMixin, unittest.TestCase):
    """The watchdog's program alarms, time driven by a Clock, Redis real."""

    PROGRAMS = ("[builder]\nmachine = builder1\nexpire = 10\n"
                "[PCA]\nexpire = 10\nalarm-level = WARNING\n"
                "[quiet]\nexpire = 10\nalarm-level = off\n")

    def setUp(self):
        RedisConnectionMixin.setUp(self)
        self.programs = load_programs(write_programs(self.PROGRAMS))
        self.clock = task.Clock()
        self.clock.advance(START)
        self.beating = {"builder": True, "PCA": True, "quiet": True}
        self.dogs = []

    def make_dog(self, programs=None):
        dog = Watchdog(self.redis, after=30, interval=1.0, clock=self.clock,
                       stats=Stats("log-server"), programs=programs or self.programs)
        return dog

    @defer.inlineCallbacks
    def start(self, programs=None):
        dog = self.make_dog(programs)
        self.beat()
        dog.startService()
        self.dogs.append(dog)
        self.addCleanup(lambda: dog.stopService() if dog.running else None)
        if dog._pending is not None:
            yield dog._pending
        return dog

    def beat(self):
        """What the programs post each second (a heartbeat key lives `expire` s; the
        Clock does not make Redis expire it, so a stopped program's key is deleted
        when its expire has passed, as Redis would)."""
        now = self.clock.seconds()
        self.silent_at = getattr(self, "silent_at", {})
        for name, on in self.beating.items():
            if on:
                self.silent_at.pop(name, None)
                self.sync.command("SET", keys.heartbeat(name), "ok", "EX", "600")
            else:
                since = self.silent_at.setdefault(name, now)
                if now - since >= self.programs[name].expire:
                    self.sync.command("DEL", keys.heartbeat(name))
        # the data conditions stay fine
        b = int(now)
        self.sync.command("SET", keys.pull_heartbeat(1, b), "1", "EX", "60")
        self.sync.command("HINCRBY", keys.trig(1, b), "TOTAL", 5)
        self.sync.command("SET", keys.DISPATCHER, "builder1", "EX", "60")

    @defer.inlineCallbacks
    def advance(self, seconds, dog=None):
        dog = dog or self.dogs[-1]
        for _ in range(seconds):
            self.beat()
            self.clock.advance(1)
            if dog._pending is not None:
                yield dog._pending

    def program_alarms(self):
        return [a for a in all_alarms(self.sync) if not a["message"].startswith("watchdog")]

    @defer.inlineCallbacks
    def test_quiet_while_programs_beat(self):
        yield self.start()
        yield self.advance(120)
        self.assertEqual(self.program_alarms(), [])

    @defer.inlineCallbacks
    def test_one_alarm_per_expiry_one_cleared_per_return(self):
        yield self.start()
        yield self.advance(5)
        self.beating["builder"] = False
        yield self.advance(10 + C.PROGRAM_ALARM_CONFIRM - 1)  # expired, not yet confirmed
        self.assertEqual(self.program_alarms(), [])
        yield self.advance(60)  # long down: still one alarm
        [alarm] = self.program_alarms()
        self.assertEqual(alarm["level"], 40)
        self.assertTrue(alarm["message"].startswith("builder - not responding on builder1: "
                                                    "no heartbeat for 1"), alarm)
        self.assertEqual(self.sync.hgetall(keys.WATCHDOG_ALARMED),
                         {"program:builder": str(alarm["id"])})
        self.beating["builder"] = True
        yield self.advance(30)
        raised, cleared = self.program_alarms()
        self.assertEqual(cleared["level"], C.ALARM_CLEARED_LEVEL)
        # silent from its stop to its return: 10 + CONFIRM - 1 + 60 s
        self.assertEqual(cleared["message"], "builder - responding again after %d s without "
                                             "a heartbeat" % (69 + C.PROGRAM_ALARM_CONFIRM))
        self.assertEqual(self.sync.hgetall(keys.WATCHDOG_ALARMED), {})
        # a second outage is a second alarm
        self.beating["builder"] = False
        yield self.advance(20)
        self.assertEqual([a["level"] for a in self.program_alarms()], [40, 21, 40])

    @defer.inlineCallbacks
    def test_level_from_programs_ini_and_off(self):
        yield self.start()
        self.beating["PCA"] = self.beating["quiet"] = False
        yield self.advance(30)
        [alarm] = self.program_alarms()
        self.assertEqual((alarm["level"], alarm["message"].split(" - ")[0]), (30, "PCA"))

    @defer.inlineCallbacks
    def test_a_flickering_key_is_not_down(self):
        """A program posting exactly every `expire` s: its key is gone for a moment."""
        yield self.start()
        for _ in range(20):
            self.sync.command("DEL", keys.heartbeat("builder"))
            self.clock.advance(1)
            yield self.dogs[-1]._pending
            yield self.advance(C.PROGRAM_ALARM_CONFIRM)
        self.assertEqual(self.program_alarms(), [])

    @defer.inlineCallbacks
    def test_silent_since_start_one_alarm_after_the_grace(self):
        self.beating["builder"] = False
        self.silent_at = {"builder": START - 1000}  # silent long before the start
        self.sync.command("DEL", keys.heartbeat("builder"))
        yield self.start()
        grace = max(10, C.PROGRAM_ALARM_START_GRACE)
        yield self.advance(grace - 2)
        self.assertEqual(self.program_alarms(), [])
        yield self.advance(60)
        [alarm] = self.program_alarms()
        self.assertIn("builder - not responding on builder1: no heartbeat in the", alarm["message"])

    @defer.inlineCallbacks
    def test_programs_back_within_the_grace_after_a_restart_raise_nothing(self):
        """A restarted log server: every heartbeat expired while it was away, the
        programs post again within their retry backoff."""
        for name in self.beating:
            self.sync.command("DEL", keys.heartbeat(name))
        self.beating = {name: False for name in self.beating}
        self.silent_at = {name: START - 100 for name in self.beating}
        yield self.start()
        yield self.advance(int(C.MONITOR_MAX_BACKOFF))
        self.beating = {name: True for name in self.beating}
        yield self.advance(120)
        self.assertEqual(self.program_alarms(), [])

    @defer.inlineCallbacks
    def test_a_restart_repeats_nothing_and_still_clears(self):
        first = yield self.start()
        self.beating["builder"] = False
        yield self.advance(30)
        self.assertEqual(len(self.program_alarms()), 1)
        yield first.stopService()
        second = yield self.start()  # a new log-server process, builder still down
        yield self.advance(120, second)
        self.assertEqual(len(self.program_alarms()), 1)
        self.beating["builder"] = True
        yield self.advance(5, second)
        raised, cleared = self.program_alarms()
        self.assertEqual(cleared["message"], "builder - responding again")
        self.assertEqual(cleared["level"], 21)
        # two watchdogs at once (two log servers on one Redis) still raise it once
        third = yield self.start()
        self.beating["builder"] = False
        for _ in range(30):
            self.beat()
            self.clock.advance(1)
            for dog in (second, third):
                if dog._pending is not None:
                    yield dog._pending
        self.assertEqual([a["level"] for a in self.program_alarms()], [40, 21, 40])

    @defer.inlineCallbacks
    def test_a_program_removed_from_programs_ini_is_forgotten(self):
        first = yield self.start()
        self.beating["PCA"] = False
        yield self.advance(30)
        self.assertIn("program:PCA", self.sync.hgetall(keys.WATCHDOG_ALARMED))
        yield first.stopService()
        fewer = {n: p for n, p in self.programs.items() if n != "PCA"}
        del self.beating["PCA"]
        yield self.start(fewer)
        yield self.advance(3)
        self.assertNotIn("program:PCA", self.sync.hgetall(keys.WATCHDOG_ALARMED))
        self.assertEqual(len(self.program_alarms()), 1)  # no "cleared" made up for it


class AckTests(SiteTestMixin, unittest.TestCase):
    """POST ack_alarm and GET alarm_acks of the main site."""

    def setUp(self):
        d = SiteTestMixin.setUp(self)
        for i, level in enumerate((40, 40, 30)):
            self.sync.command("SET", "alarms:%d" % i, json.dumps(
                {"id": i, "level": level, "message": "m%d" % i,
                 "time": "2023-11-14T22:13:20.000Z"}), "EX", 3600)
        self.sync.command("SET", "alarms:count", "3")
        return d

    @defer.inlineCallbacks
    def ack(self, body, content_type=b"application/json", headers=None, expect=None):
        hdrs = {b"content-type": [content_type]} if content_type else {}
        hdrs.update(headers or {})
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        resp = yield treq.post(self.base + "ack_alarm", data=data, headers=hdrs,
                               pool=self.pool)
        answer = json.loads((yield resp.content()))
        if expect is not None:
            self.assertEqual(resp.code, expect, answer)
        return resp.code, answer

    @defer.inlineCallbacks
    def test_acknowledge_for_every_screen(self):
        first = yield self.get_json("alarm_acks")
        self.assertEqual(first, {"version": 0, "acks": {}})
        code, answer = yield self.ack({"name": "  Ana  Lopes ", "ids": [1, 0, 1]}, expect=200)
        self.assertEqual(answer["acknowledged"], [1, 0])
        self.assertEqual(answer["already"], [])
        self.assertEqual(answer["by"], "Ana Lopes")
        self.assertEqual(answer["time"], "2023-11-14T22:13:20.000Z")  # the site's clock
        self.assertEqual(answer["version"], 1)
        # another screen reads them
        acks = yield self.get_json("alarm_acks?version=0")
        record = {"by": "Ana Lopes", "time": "2023-11-14T22:13:20.000Z"}
        self.assertEqual(acks, {"version": 1, "acks": {"0": record, "1": record}})
        unchanged = yield self.get_json("alarm_acks?version=1")
        self.assertEqual(unchanged, {"version": 1})  # nothing changed: no record sent
        # the first acknowledgement stays
        self.clock.advance(60)
        code, answer = yield self.ack({"name": "Bo", "ids": [0, 2]}, expect=200)
        self.assertEqual((answer["acknowledged"], answer["already"]), ([2], [0]))
        acks = yield self.get_json("alarm_acks?version=1")
        self.assertEqual(acks["acks"]["0"]["by"], "Ana Lopes")
        self.assertEqual(acks["acks"]["2"], {"by": "Bo", "time": "2023-11-14T22:14:20.000Z"})
        self.assertEqual(acks["version"], 2)
        code, answer = yield self.ack({"name": "Bo", "ids": [2]}, expect=200)
        self.assertEqual((answer["acknowledged"], answer["version"]), ([], 2))  # no change
        # the alarms themselves (compat keys other programs read) are untouched
        self.assertEqual(json.loads(self.sync.command("GET", "alarms:0"))["message"], "m0")
        self.assertTrue(0 < self.sync.command("TTL", keys.ALARM_ACKS) <= C.ALARM_TTL)

    @defer.inlineCallbacks
    def test_acks_of_expired_alarms_are_dropped(self):
        yield self.ack({"name": "Ana", "ids": [0]}, expect=200)
        self.sync.command("DEL", "alarms:0")  # expired (24 h)
        yield self.ack({"name": "Ana", "ids": [1]}, expect=200)
        self.assertEqual(sorted(self.sync.hgetall(keys.ALARM_ACKS)), ["1"])

    @defer.inlineCallbacks
    def test_bad_requests(self):
        for body, reason in (
                ({"ids": [0]}, "name is required"),
                ({"name": "   ", "ids": [0]}, "name is required"),
                ({"name": 7, "ids": [0]}, "name must be text"),
                ({"name": "x" * (C.ACK_NAME_MAX + 1), "ids": [0]}, "longer than 64"),
                ({"name": "a\u0007b", "ids": [0]}, "cannot be shown"),
                ({"name": "Ana"}, "ids must be a list"),
                ({"name": "Ana", "ids": []}, "ids must be a list"),
                ({"name": "Ana", "ids": "0"}, "ids must be a list"),
                ({"name": "Ana", "ids": [0, "1"]}, "integers"),
                ({"name": "Ana", "ids": [1.5]}, "integers"),
                ({"name": "Ana", "ids": [True]}, "integers"),
                ({"name": "Ana", "ids": [-1]}, "integers"),
                ({"name": "Ana", "ids": list(range(C.ACK_MAX_IDS + 1))}, "at most 1000"),
                ({"name": "Ana", "ids": [0], "extra": 1}, "unknown field"),
                ([0], "JSON object"),
                (b"{not json", "not JSON"),
                (b"\xff\xfe", "not JSON")):
            code, answer = yield self.ack(body)
            self.assertEqual(code, 400, (body, answer))
            self.assertIn(reason, answer["error"], body)
        # an id that is no alarm: 400 and nothing stored, not even the others
        code, answer = yield self.ack({"name": "Ana", "ids": [0, 7, 9]})
        self.assertEqual(code, 400)
        self.assertIn("no alarm 7, 9", answer["error"])
        self.assertEqual(self.sync.hgetall(keys.ALARM_ACKS), {})
        code, _ = yield self.ack(b"ids=0&name=Ana",
                                 content_type=b"application/x-www-form-urlencoded")
        self.assertEqual(code, 400)
        code, _ = yield self.ack(b'{"name": "Ana", "ids": [0]}', content_type=b"text/plain")
        self.assertEqual(code, 400)
        code, answer = yield self.ack(b"{" + b" " * C.ACK_BODY_MAX + b"}")
        self.assertEqual(code, 413, answer)
        code, _, _ = yield self.get("ack_alarm")
        self.assertEqual(code, 405)
        code, _, body = yield self.get("alarm_acks?version=soon")
        self.assertEqual(code, 400)
        self.assertEqual(self.sync.hgetall(keys.ALARM_ACKS), {})

    @defer.inlineCallbacks
    def test_cross_site_requests_are_refused(self):
        host = self.base.split("/")[2].encode()
        body = {"name": "Mallory", "ids": [0]}
        for headers in ({b"origin": [b"http://evil.example"]},
                        {b"origin": [b"null"]},
                        {b"origin": [b"http://" + host + b".evil.example"]},
                        {b"sec-fetch-site": [b"cross-site"]},
                        {b"sec-fetch-site": [b"same-site"], b"origin": [b"http://" + host]}):
            code, answer = yield self.ack(body, headers=headers)
            self.assertEqual(code, 403, headers)
            self.assertIn("cross-site request refused", answer["error"])
        self.assertEqual(self.sync.hgetall(keys.ALARM_ACKS), {})
        # what the site's own page sends
        yield self.ack(body, headers={b"origin": [b"http://" + host],
                                      b"sec-fetch-site": [b"same-origin"]}, expect=200)


class StandInTests(LogServerMixin, unittest.TestCase):
    """The simulator's stand-ins post the DAQ programs' heartbeats to the real server."""

    @defer.inlineCallbacks
    def test_heartbeats_of_the_named_programs(self):
        pw = os.path.join(self.tmp, "pw")
        with open(pw, "w") as f:
            f.write(PASSWORD + "\n")
        service = stand_in_service(["builder", "xl3"], {"url": self.url, "user": USER,
                                                        "password-file": pw,
                                                        "interval": "0.2"})
        service.startService()
        self.addCleanup(service.stopService)
        yield wait_for(lambda: self.sync.command("GET", "heartbeat:builder") == "ok"
                       and self.sync.command("GET", "heartbeat:xl3") == "ok")
        self.assertIsNone(self.sync.command("GET", "heartbeat:mtc"))
        # they keep the keys alive: posted again every interval
        beats = [child.posted for child in service]
        yield wait_for(lambda: all(child.posted >= b + 2 for child, b in zip(service, beats)))

    def test_names_and_config(self):
        self.assertEqual(parse_names("builder, xl3 builder,,mtc"), ["builder", "xl3", "mtc"])
        for bad in ("", " , ", "bad/name", "../x"):
            self.assertRaises(StandInError, parse_names, bad)
        self.assertRaises(StandInError, stand_in_service, ["builder"], {})
        with self.assertRaises(tap.OptionError):
            tap.program_names("a b/c")

    def test_the_local_system_stands_in_for_every_daq_program(self):
        local = deploy.local_layout(tempfile.mkdtemp())
        stand_ins = deploy.stand_in_programs(local)
        own = deploy.own_programs(local)
        self.assertEqual(sorted(stand_ins + own), sorted(load_programs(local.programs)))
        self.assertEqual(len(stand_ins), 13)
        self.assertFalse(set(stand_ins) & set(own))
        ini = os.path.join(tempfile.mkdtemp(), "minard.ini")
        with open(ini, "w") as f:
            f.write(deploy.render_ini(local))
        known = {name for name, *_ in tap.COMMON + tap.ROLES["simulator"]}
        section = tap.read_config(ini, "simulator", known)
        self.assertEqual(tap.program_names(section["stand-in-for"]), stand_ins)
        # never in production
        self.assertNotIn("stand-in-for", deploy.render_ini(deploy.PRODUCTION))


class OwnLogTests(LogServerMixin, unittest.TestCase):
    """The log server's own records: its own log file, and alarms for its errors."""

    def test_lines_and_bounded_alarms(self):
        own = OwnLog(self.logsite, "log")
        own.send(20, "watchdog alarm 3 (level 40): builder - not responding")
        for i in range(C.MONITOR_FORWARD_BURST + 10):
            own.send(50, "unexpected error %d" % i)
        lines = self.log_lines("log")
        self.assertEqual(len(lines), C.MONITOR_FORWARD_BURST + 11)
        self.assertIn(" - log - INFO - watchdog alarm 3", lines[0])
        self.assertIn(" - log - CRITICAL - unexpected error 0", lines[1])
        d = wait_for(lambda: len(all_alarms(self.sync)) == C.MONITOR_FORWARD_BURST)
        return d.addCallback(lambda _: self.assertEqual(all_alarms(self.sync)[0]["message"],
                                                        "log - unexpected error 0"))


class LogServerRoleTests(RedisConnectionMixin, unittest.TestCase):
    """The real log-server process: a program whose heartbeat stops gets one alarm, one
    'cleared' when it is back, and the log server's own log says so."""

    timeout = 120

    def test_role(self):
        return self._test_role()

    @defer.inlineCallbacks
    def _test_role(self):
        from twisted.internet import reactor
        tmp = tempfile.mkdtemp(prefix="minard-logrole-")
        programs = write_programs("[builder]\nmachine = builder1\nexpire = 2\n"
                                  "[log]\nexpire = 10\n")
        port = free_port()
        role = RoleProcess("log-server", "--redis", self.redis_server.url, "--listen",
                           "tcp:%d:interface=127.0.0.1" % port, "--log-dir",
                           os.path.join(tmp, "logs"), "--programs", programs,
                           "--auth-file", write_users(tmp), directory=tmp).start()
        self.addCleanup(role.stop)
        url = "http://127.0.0.1:%d/heartbeat" % port

        @defer.inlineCallbacks
        def post():
            resp = yield treq.post(url, data={"name": "builder", "status": "ok"},
                                   headers={b"authorization": [basic()]}, persistent=False)
            yield treq.content(resp)
            return resp.code

        deadline = time.time() + 20
        while True:
            try:
                code = yield post()
                break
            except Exception:
                if time.time() > deadline or not role.alive():
                    self.fail("the log server did not start: %s" % role.log()[-2000:])
                yield task.deferLater(reactor, 0.2, lambda: None)
        self.assertEqual(code, 200)
        # it stops posting: expire 2 s + PROGRAM_ALARM_CONFIRM later, one alarm
        yield wait_for(lambda: any("builder - not responding" in a["message"]
                                   for a in all_alarms(self.sync)), timeout=20)
        yield task.deferLater(reactor, 3, lambda: None)
        alarms = [a for a in all_alarms(self.sync) if a["message"].startswith("builder")]
        self.assertEqual([a["level"] for a in alarms], [40])
        yield post()
        yield wait_for(lambda: any("builder - responding again" in a["message"]
                                   for a in all_alarms(self.sync)), timeout=10)
        alarms = [a for a in all_alarms(self.sync) if a["message"].startswith("builder")]
        self.assertEqual([a["level"] for a in alarms], [40, 21])
        # the log server's own log (/view_log?name=log) has its watchdog's alarms
        own = os.path.join(tmp, "logs", "log.log")
        yield wait_for(lambda: os.path.exists(own) and "responding again" in open(own).read())
        with open(own) as f:
            text = f.read()
        self.assertIn(" - log - INFO - watchdog alarm", text)
        self.assertIn("builder - not responding on builder1", text)
