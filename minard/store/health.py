"""Redis side of channel health (minard/health/): the baselines, the service's position
and open findings, the closed findings, the masked channels (key names in keys.py).

* `minard:health:baseline:<name>` (string): one quantity's baseline, the byte format of
  minard.health.model.Baseline (235,536 bytes).
* `minard:health:state` (hash): `position` (the last bucket applied), `interval`,
  `updated` (unix time), `applied` (buckets applied since the baselines began),
  `next_id`, `config` (JSON of the thresholds in force).
* `minard:health:findings` (string): JSON list of the open findings, newest first.
* `minard:health:closed` (list, newest first): JSON of the closed findings, the last
  CLOSED_KEPT.
* `minard:health:masks` (hash): channel index -> JSON {index, crate, card, channel, by,
  at, reason} of a masked (known-bad) channel.

A bucket is applied in one script (health_apply.lua) that first compares the stored
position with the one the service started from: applied at most once, whoever runs,
with its alarms (stored as the log server stores alarms) in the same atomic step. The
baselines and the open findings are SET just before under keys of the instance
(`minard:health:staged:<token>:<what>`, TTL STAGED_TTL) and renamed into place by the
script: ~160 KB passed through a script costs Redis ~0.7 ms, a SET and a RENAME ~10 µs.
"""
import json

from twisted.internet import defer

from minard import constants as C
from minard.store import channels, keys
from minard.store.logserver import iso_utc
from minard.store.scripts import Script

HEALTH_READY = Script("health_ready.lua")
HEALTH_APPLY = Script("health_apply.lua")

NAMES = ("occupancy", "cmos", "base")
#: Closed findings kept (the page shows the newest).
CLOSED_KEPT = 500
STATE_FIELDS = ("position", "interval", "updated", "applied", "next_id", "config")


def _text(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value


def _pairs(reply):
    """HGETALL's reply (a dict or a flat list) as a dict of text."""
    if isinstance(reply, dict):
        return {_text(k): _text(v) for k, v in reply.items()}
    reply = list(reply or [])
    return {_text(k): _text(v) for k, v in zip(reply[::2], reply[1::2])}


def ready(redis, interval, b, writer_timeout=channels.WRITER_TIMEOUT):
    """Deferred {name: (finalised, open, writers behind)} of bucket b of every quantity."""
    script_keys = []
    for name in NAMES:
        script_keys += [keys.channel_final(name, interval, b), keys.channel_open(name),
                        keys.channel_writers(name)]
    d = HEALTH_READY(redis, script_keys, [keys.bucket_member(interval, b),
                                          str((b + 1) * interval - 1), str(writer_timeout)])
    return d.addCallback(lambda reply: {
        name: tuple(int(v) for v in r) for name, r in zip(NAMES, list(reply or []))})


def settled(state):
    """Whether a quantity's bucket is decided: finalised, or neither finalised nor open
    and no live writer still before its end (no data)."""
    finalised, open_, behind = state
    return bool(finalised) or (not open_ and not behind)


@defer.inlineCallbacks
def read_bucket(redis, interval, b):
    """{name: decoded finalised bucket (channels.decode_final) or None}, one MGET."""
    reply = yield redis.execute_command(
        "MGET", *[keys.channel_final(name, interval, b) for name in NAMES])
    out = {}
    for name, blob in zip(NAMES, list(reply or [])):
        try:
            out[name] = None if blob is None else channels.decode_final(blob)
        except ValueError:
            out[name] = None
    return out


@defer.inlineCallbacks
def load(redis):
    """(state {field: text}, open findings JSON text or None, {name: baseline bytes or
    None}) as stored."""
    state = yield redis.execute_command("HGETALL", keys.HEALTH_STATE)
    values = yield redis.execute_command(
        "MGET", keys.HEALTH_FINDINGS, *[keys.health_baseline(n) for n in NAMES])
    values = list(values or [])
    return _pairs(state), _text(values[0]), {n: (None if b is None else channels.as_bytes(b))
                                             for n, b in zip(NAMES, values[1:])}


#: A staged value lives this long (s) if its apply never comes (the process died).
STAGED_TTL = 600


def apply_commands(token, expected, position, interval, updated, applied, next_id,
                   findings, config, baselines, closed, alarms, alarm_ttl=C.ALARM_TTL):
    """The writes of one judged bucket: ([staging SET commands], KEYS, ARGV of
    health_apply.lua). token: the service instance's (its staged keys are its own);
    expected: the stored position it started from (text, '' for none); baselines: {name:
    bytes} of the quantities that changed; findings: the open ones; closed: [finding
    dicts]; alarms: [(level, message)], stamped `updated`."""
    staged = [(keys.health_staged(token, n), keys.health_baseline(n), baselines[n])
              for n in NAMES if n in baselines]
    staged.append((keys.health_staged(token, "findings"), keys.HEALTH_FINDINGS,
                   json.dumps(findings, separators=(",", ":"))))
    commands = [("SET", stage, value, "EX", str(STAGED_TTL)) for stage, _, value in staged]
    script_keys = [keys.HEALTH_STATE, keys.HEALTH_CLOSED, keys.ALARMS_COUNT]
    for stage, live, _ in staged:
        script_keys += [stage, live]
    args = [expected, str(position), str(interval), repr(float(updated)), str(applied),
            str(next_id), json.dumps(config, separators=(",", ":"))]
    args.append(str(len(closed)))
    args += [json.dumps(f, separators=(",", ":")) for f in closed]
    args.append(str(CLOSED_KEPT))
    args.append(str(len(alarms)))
    for level, message in alarms:
        args += [str(int(level)), message]
    args += [iso_utc(updated), str(int(alarm_ttl)), keys.ALARM_PREFIX]
    return commands, script_keys, args


@defer.inlineCallbacks
def apply(redis, token, *args, **kwargs):
    """Store one judged bucket (apply_commands' arguments) if the stored position is still
    the expected one: the big values are SET first under staged keys, then one script
    checks the position and renames them into place with the rest. Fires True, or False
    when the position had moved (someone else applied it: nothing changed, the staged
    values are deleted). A staged value that expired before the script ran is a
    RuntimeError (nothing changed either)."""
    commands, script_keys, script_args = apply_commands(token, *args, **kwargs)
    yield defer.gatherResults([redis.execute_command(*c) for c in commands],
                              consumeErrors=True).addErrback(
        lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError) else f)
    reply = int((yield HEALTH_APPLY(redis, script_keys, script_args)))
    if reply == 1:
        return True
    yield redis.execute_command("DEL", *[c[1] for c in commands])
    if reply == -1:
        raise RuntimeError("a staged channel-health value expired before it was applied")
    return False


# -- masks ------------------------------------------------------------------------------

def read_masks(redis):
    """Deferred {channel index: entry dict} of the masked channels."""
    d = redis.execute_command("HGETALL", keys.HEALTH_MASKS)

    def parse(reply):
        out = {}
        for field, value in _pairs(reply).items():
            try:
                entry = json.loads(value)
                out[int(field)] = entry
            except (TypeError, ValueError):
                continue  # not ours: ignored
        return out

    return d.addCallback(parse)


def mask(redis, index, user, at, reason):
    """Mask channel `index` (who: user, when: at unix time, why: reason); the entry."""
    crate, card, channel = index >> 9, index >> 5 & 15, index & 31
    entry = {"index": index, "crate": crate, "card": card, "channel": channel, "by": user,
             "at": at, "reason": reason}
    d = redis.execute_command("HSET", keys.HEALTH_MASKS, str(index),
                              json.dumps(entry, separators=(",", ":")))
    return d.addCallback(lambda _: entry)


def unmask(redis, index):
    """Unmask channel `index`: Deferred True if it was masked."""
    d = redis.execute_command("HDEL", keys.HEALTH_MASKS, str(index))
    return d.addCallback(lambda n: int(n) == 1)


# -- the page ---------------------------------------------------------------------------

@defer.inlineCallbacks
def read_page(redis, closed_limit):
    """(state {field: text, "findings": open findings JSON}, closed [finding dicts],
    masks {index: entry}) for the page."""
    state = yield redis.execute_command("HMGET", keys.HEALTH_STATE, *STATE_FIELDS)
    findings = yield redis.execute_command("GET", keys.HEALTH_FINDINGS)
    closed = []
    if closed_limit > 0:  # (LRANGE 0 -1 would be all of them)
        closed = yield redis.execute_command("LRANGE", keys.HEALTH_CLOSED, 0, closed_limit - 1)
    masks = yield read_masks(redis)
    out = []
    for item in list(closed or []):
        try:
            out.append(json.loads(_text(item)))
        except ValueError:
            continue
    state = dict(zip(STATE_FIELDS, [_text(v) for v in list(state or [])]))
    state["findings"] = _text(findings)
    return state, out, masks
