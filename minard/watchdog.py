"""The watchdog of the log-server process: stale data and silent programs.

Stale is not the same as zero: the shifter must be told when the data stop, not shown a
flat line. These conditions are watched, each on its own:

* `pull`: no dispatch-pull worker heartbeat (`ts:1:<b>:heartbeat`) in recent seconds;
* `dispatcher`: the `dispatcher` key is missing (the push side has no dispatcher link);
* `events`: the pull workers are alive but TOTAL of `ts:1:<b>:trig` stays missing or 0;
* `memory`: Redis uses MEMORY_ALARM (80 %) or more of its maxmemory. Redis runs with
  `noeviction` (nothing of minard's is ever evicted), so a full Redis refuses writes:
  the shifter is warned well before, at once (no `after` wait), and again by a
  "cleared" alarm when usage is back below the mark.

A condition that lasts `after` seconds raises ONE alarm (level 40); when the data come
back ONE "cleared" alarm at level 21 (SUCCESS) is recorded. While the pull workers are
down the event count is unknown, so no `events` alarm is raised for that time.

And every program of programs.ini (its `alarm-level` not off): when its `heartbeat:<name>`
key has expired (the program was silent for its `expire`, the Status page says "Not
responding") and stays gone PROGRAM_ALARM_CONFIRM s, ONE alarm `<name> - not responding`
at the program's alarm-level; when it posts again, ONE "cleared" alarm. After the log
server starts (or Redis comes back) a program has max(expire, PROGRAM_ALARM_START_GRACE) s
to post its first heartbeat: a program configured but silent that long is not responding
(one alarm each), and a restart, after which every client posts again within its retry
backoff, raises nothing.

Which alarms are up is kept in Redis (keys.WATCHDOG_ALARMED, changed atomically with the
alarm itself), so a restarted log server neither repeats an alarm nor forgets to clear it.
Configured by the `[watchdog]` INI section: `enabled` (default yes), `after-seconds`.
"""
from twisted.application.internet import TimerService
from twisted.internet import defer
from twisted.logger import Logger

from minard import constants as C
from minard.store import keys
from minard.store import logserver as store
from minard.store import reads

#: Seconds looked at on each tick: the current one and a few before it (a worker
#: writes a second when it ends, a little after the tick may have looked).
LOOKBACK = 3
#: Name shown in the alarms (`watchdog - ...`).
ALARM_NAME = "watchdog"
WATCHDOG_KEYS = {"enabled", "after-seconds"}


#: Alarm when Redis uses this share of its maxmemory.
MEMORY_ALARM = 0.8


class Condition:
    """One watched condition: when it last was fine and whether its alarm is up. `after`
    None: the watchdog's after-seconds."""

    def __init__(self, name, stale_text, cleared_text, since, after=None):
        self.name = name
        self.field = store.condition_field(name)
        self.stale_text = stale_text
        self.cleared_text = cleared_text
        self.last_ok = since
        self.alarmed = False
        self.after = after


class ProgramWatch:
    """One program of programs.ini: whether its heartbeat was seen since the watch (re)
    started, since when it is missing, and whether its alarm is up."""

    def __init__(self, program):
        self.program = program
        self.field = store.program_field(program.name)
        self.alarmed = False
        self.silent_since = None  # when it last posted, if known (monotonic s)
        self.seen = False  # heartbeat seen since the watch began
        self.missing_since = None  # first tick that found it gone (monotonic s)


class Watchdog(TimerService):
    log = Logger()

    def __init__(self, redis, after=C.WATCHDOG_AFTER, interval=C.WATCHDOG_INTERVAL,
                 clock=None, stats=None, wall=None, programs=None):
        TimerService.__init__(self, interval, self.tick)
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock  # durations (monotonic in the roles: minard/clock.py)
        self.wall = wall or clock.seconds  # which seconds' buckets to look at, alarm times
        self.redis = redis
        self.after = after
        self.stats = stats
        self._pending = None
        self._failing = False
        self.conditions = {}
        #: name -> ProgramWatch of the programs whose silence raises an alarm
        self.programs = {name: ProgramWatch(p) for name, p in (programs or {}).items()
                         if p.alarm_level is not None}
        self.state_loaded = False  # alarms up read from Redis (at start, after a failure)
        self.watch_started = None  # when the program watch (re)began (monotonic s)

    def startService(self):
        now = self.clock.seconds()
        after = int(self.after)
        self.conditions = {
            "pull": Condition("pull", "no dispatch-pull worker heartbeat for %d s" % after,
                              "dispatch-pull workers are alive again", now),
            "dispatcher": Condition("dispatcher",
                                    "no dispatcher link for %d s (key `dispatcher` missing)"
                                    % after, "the dispatcher link is up again", now),
            "events": Condition("events", "no events for %d s (event rate is 0)" % after,
                                "events are arriving again", now),
            "memory": Condition("memory", "", "Redis memory back below %d %% of maxmemory"
                                % (MEMORY_ALARM * 100), now, after=0),
        }
        TimerService.startService(self)

    def stopService(self):
        d = TimerService.stopService(self)
        if self._pending is not None:
            self._pending.cancel()
        return d

    def tick(self):
        """Look at Redis once; never raises (errors are counted and logged once)."""
        if self._pending is not None:  # Redis is slow: do not pile up checks
            return
        d = self._pending = defer.maybeDeferred(self._check)
        d.addErrback(self._failed)
        d.addBoth(self._done)  # may run at once: _pending is None again

    def _done(self, _):
        self._pending = None

    def _failed(self, failure):
        if failure.check(defer.CancelledError):
            return
        self.state_loaded = False  # read the alarms' state again once Redis answers
        if self.stats is not None:
            self.stats.incr("watchdog_errors")
        if not self._failing:
            self.log.failure("watchdog: check failed (Redis away?); retrying every tick",
                             failure)
        self._failing = True

    @defer.inlineCallbacks
    def _load_alarmed(self, now):
        """At start and after Redis failed: which alarms are up (keys.WATCHDOG_ALARMED),
        forgetting programs no longer in programs.ini; the programs' grace begins."""
        alarmed = yield store.watchdog_alarmed(self.redis)
        for condition in self.conditions.values():
            condition.alarmed = condition.field in alarmed
        for watch in self.programs.values():
            watch.alarmed = watch.field in alarmed
            watch.seen = False
            watch.missing_since = None
        gone = [f for f in alarmed if f.startswith(store.program_field(""))
                and f[len(store.program_field("")):] not in self.programs]
        yield store.forget_watchdog_alarms(self.redis, gone)
        self.watch_started = now
        self.state_loaded = True

    @defer.inlineCallbacks
    def _check(self):
        now = self.clock.seconds()
        if not self.state_loaded:
            yield self._load_alarmed(now)
        second = int(self.wall())
        seconds = range(second - LOOKBACK, second + 1)
        totals = yield defer.gatherResults(
            [self.redis.hget(keys.trig(1, b), "TOTAL") for b in seconds], consumeErrors=True)
        beats = yield self.redis.mget([keys.pull_heartbeat(1, b) for b in seconds])
        dispatcher = yield self.redis.exists(keys.DISPATCHER)
        pull_ok = any(beats)
        events_ok = any(_positive(t) for t in totals)
        yield self._update(self.conditions["pull"], pull_ok, now)
        yield self._update(self.conditions["dispatcher"], bool(dispatcher), now)
        events = self.conditions["events"]
        if not pull_ok and not events_ok:
            events.last_ok = max(events.last_ok, now)  # unknown, not zero
        yield self._update(events, events_ok, now)
        memory = yield reads.redis_memory(self.redis)
        memory_cond = self.conditions["memory"]
        if memory["ratio"] is not None and memory["ratio"] >= MEMORY_ALARM:
            memory_cond.stale_text = (
                "Redis uses %.0f %% of its maxmemory (%.2f of %.2f GB): at 100 %% it refuses "
                "writes and monitoring data are lost; see README, sizing Redis"
                % (memory["ratio"] * 100, memory["used"] / 1e9, memory["max"] / 1e9))
            yield self._update(memory_cond, False, now)
        else:
            yield self._update(memory_cond, True, now)
        yield self._check_programs(now)
        if self._failing:
            self.log.info("watchdog: checks work again")
        self._failing = False

    @defer.inlineCallbacks
    def _update(self, condition, ok, now):
        if ok:
            condition.last_ok = now
            if condition.alarmed:
                yield self._alarm(condition.field, False, C.ALARM_CLEARED_LEVEL,
                                  "%s - %s" % (ALARM_NAME, condition.cleared_text))
                condition.alarmed = False
        elif not condition.alarmed and now - condition.last_ok >= (
                self.after if condition.after is None else condition.after):
            yield self._alarm(condition.field, True, C.ALARM_LEVEL,
                              "%s - %s" % (ALARM_NAME, condition.stale_text))
            condition.alarmed = True

    @defer.inlineCallbacks
    def _check_programs(self, now):
        """One look at every watched program's heartbeat key (one MGET)."""
        watches = list(self.programs.values())
        if not watches:
            return
        beats = yield self.redis.mget([keys.heartbeat(w.program.name) for w in watches])
        for watch, beat in zip(watches, beats):
            program = watch.program
            if beat is not None:
                watch.seen = True
                watch.missing_since = None
                if watch.alarmed:
                    yield self._alarm(watch.field, False, C.ALARM_CLEARED_LEVEL,
                                      "%s - responding again%s" % (
                                          program.name, self._down_for(watch, now)))
                    watch.alarmed = False
                    watch.silent_since = None
                continue
            if watch.missing_since is None:
                watch.missing_since = now
            if watch.alarmed:
                continue
            if watch.seen:
                due = now - watch.missing_since >= C.PROGRAM_ALARM_CONFIRM
                text = "no heartbeat for %d s (expire %d s)" % (
                    program.expire + now - watch.missing_since, program.expire)
            else:
                waited = now - self.watch_started
                due = waited >= max(program.expire, C.PROGRAM_ALARM_START_GRACE)
                text = "no heartbeat in the %d s since the log server began watching" % (
                    waited,)
            if due:
                where = " on %s" % program.machine if program.machine else ""
                yield self._alarm(watch.field, True, program.alarm_level,
                                  "%s - not responding%s: %s" % (program.name, where, text))
                watch.alarmed = True
                watch.silent_since = (watch.missing_since - program.expire) if watch.seen \
                    else None

    @staticmethod
    def _down_for(watch, now):
        if watch.silent_since is None:  # silent since before this process watched
            return ""
        return " after %s without a heartbeat" % _duration(now - watch.silent_since)

    @defer.inlineCallbacks
    def _alarm(self, field, up, level, message):
        """Raise (up) or clear the alarm of `field`, once (store.watchdog_alarm)."""
        alarm_id, changed = yield store.watchdog_alarm(self.redis, field, up, level, message,
                                                       self.wall())
        if not changed:
            return
        if self.stats is not None:
            self.stats.incr("watchdog_alarms")
        self.log.info("watchdog alarm {id} (level {alarm_level}): {text}", id=alarm_id,
                      alarm_level=level, text=message)


def _duration(seconds):
    """12 s, 4 min, 3.5 h: how long something lasted, as a shifter reads it."""
    if seconds < 120:
        return "%d s" % seconds
    if seconds < 7200:
        return "%d min" % round(seconds / 60.0)
    return "%.1f h" % (seconds / 3600.0)


def _positive(value):
    try:
        return float(value) > 0
    except (TypeError, ValueError):
        return False


def parse_section(section):
    """(enabled, after) from a [watchdog] section; raises ValueError with the reason."""
    section = section or {}
    unknown = set(section) - WATCHDOG_KEYS
    if unknown:
        raise ValueError("[watchdog] unknown key %r (known: %s)"
                         % (sorted(unknown)[0], ", ".join(sorted(WATCHDOG_KEYS))))
    enabled_text = str(section.get("enabled", "yes")).strip().lower()
    if enabled_text in ("yes", "true", "on", "1"):
        enabled = True
    elif enabled_text in ("no", "false", "off", "0"):
        enabled = False
    else:
        raise ValueError("[watchdog] enabled must be yes or no, not %r" % (enabled_text,))
    try:
        after = float(section.get("after-seconds", C.WATCHDOG_AFTER))
    except ValueError:
        raise ValueError("[watchdog] after-seconds must be a number of seconds")
    if not 1 <= after <= 86400:
        raise ValueError("[watchdog] after-seconds must be between 1 and 86400")
    return enabled, after
