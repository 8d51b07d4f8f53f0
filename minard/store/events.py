"""Writing one second of aggregated events to Redis (SPEC §4), in one atomic script.

The script applies a flush payload (aggregate/events.py) to every interval: the trig,
trig:nhit and trig:charge hashes, the last run/subrun/gtid, the worker heartbeat, the
per-channel occupancy hits and event count, the exact nhit histogram and the compat nhit
samples. Each flush carries an id; the script records it, so a flush retried after a
timeout (applied, but the answer lost) is never counted twice. The receipt time of the
last event behind a bucket's run/subrun/gtid is kept in `minard:last:<I>:<b>` (outside
the `ts:` namespace that other programs scan), so that with N workers the last event
wins, whichever worker flushes last.
"""
from minard.constants import (
    EXPIRE, HASH_EXPIRE, HASH_INTERVALS, INTERVALS, NHIT_SAMPLES, NHIT_SAMPLES_TTL,
    RAW_HASH_TTL_EXTRA)

#: How long the record of an applied flush id is kept (longer than any retry).
FLUSH_MARK_TTL = 6 * 3600


def _lua_list(values):
    return "{" + ",".join(str(v) for v in values) + "}"


FLUSH_SCRIPT = """
local p = cjson.decode(ARGV[1])
local function int(v) return string.format('%%d', v) end
if p.id then
  if not redis.call('SET', 'minard:flush:' .. p.id, '1', 'NX', 'EX', %(mark_ttl)d) then
    return 0
  end
end
local t = p.t
local events = p.events
for _, I in ipairs(%(intervals)s) do
  local prefix = 'ts:' .. I .. ':' .. math.floor(t / I) .. ':'
  local ttl = I * %(expire)d
  if events > 0 then
    local trig = prefix .. 'trig'
    local nhit = trig .. ':nhit'
    local charge = trig .. ':charge'
    for f, v in pairs(p.trig) do redis.call('HINCRBY', trig, f, int(v)) end
    for f, v in pairs(p.nhit) do redis.call('HINCRBY', nhit, f, int(v)) end
    for f, v in pairs(p.charge) do redis.call('HINCRBY', charge, f, int(v)) end
    local order_key = 'minard:last:' .. I .. ':' .. math.floor(t / I)
    local previous = redis.call('GET', order_key)
    if (not previous) or tonumber(previous) <= p.order then
      redis.call('SET', order_key, int(p.order), 'EX', ttl)
      redis.call('HSET', trig, 'run', int(p.last[1]), 'subrun', int(p.last[2]),
                 'gtid', int(p.last[3]))
    end
    redis.call('EXPIRE', trig, ttl)
    redis.call('EXPIRE', nhit, ttl)
    redis.call('EXPIRE', charge, ttl)
  end
  redis.call('SET', prefix .. 'heartbeat', '1', 'EX', ttl)
end
if events > 0 then
  for _, H in ipairs(%(hash_intervals)s) do
    local prefix = 'ts:' .. H .. ':' .. math.floor(t / H) .. ':'
    local hits = prefix .. 'occupancy:hits'
    local occ = p.occ
    for i = 1, #occ, 2 do
      redis.call('HINCRBY', hits, int(occ[i]), int(occ[i + 1]))
    end
    redis.call('EXPIRE', hits, H + %(raw_margin)d)
    local count = prefix .. 'occupancy:count'
    redis.call('INCRBY', count, int(events))
    redis.call('EXPIRE', count, H + %(raw_margin)d)
    local hist = prefix .. 'nhit:hist'
    local h = p.hist
    for i = 1, #h, 2 do
      redis.call('HINCRBY', hist, int(h[i]), int(h[i + 1]))
    end
    redis.call('EXPIRE', hist, H * %(hash_expire)d)
  end
  local samples = p.samples
  if #samples > 0 then
    local key = 'ts:1:' .. t .. ':nhit'
    for i = 1, #samples do redis.call('LPUSH', key, int(samples[i])) end
    redis.call('LTRIM', key, 0, %(n_samples)d - 1)
    redis.call('EXPIRE', key, %(samples_ttl)d)
  end
end
return 1
""" % {
    "mark_ttl": FLUSH_MARK_TTL,
    "intervals": _lua_list(INTERVALS),
    "hash_intervals": _lua_list(HASH_INTERVALS),
    "expire": EXPIRE,
    "hash_expire": HASH_EXPIRE,
    "raw_margin": RAW_HASH_TTL_EXTRA,
    "n_samples": NHIT_SAMPLES,
    "samples_ttl": NHIT_SAMPLES_TTL,
}


class EventStore:
    """Applies flush payloads. flush() -> Deferred firing 1 (applied) or 0 (a repeat)."""

    def __init__(self, redis):
        self.redis = redis

    def flush(self, payload):
        return self.redis.eval(FLUSH_SCRIPT, [], [payload])
