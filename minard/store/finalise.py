"""Finalising per-channel hash buckets, exactly once (SPEC §4).

While a bucket of interval H is open, workers add into raw keys:
  occupancy:  ts:H:b:occupancy:hits (hash channel -> hits), ts:H:b:occupancy:count (int)
  cmos, base: ts:H:b:<name>:sum, ts:H:b:<name>:len (hashes channel -> sum, samples)
Once every worker has flushed into bucket p (now >= (p+1)·H + FINALISE_DELAY), one
worker turns them into the finalised hash ts:H:p:<name> (channel -> hits/count for mode
"ratio", sum/len for mode "mean") and its card and crate roll-ups. The lock
`ts:H:p:<name>:lock` (1, EX H·HASH_EXPIRE: set-if-absent, inside the script) and the
computation are one Lua script, so the work is done once and no lock can outlive a failed
finalisation: reads come before the lock is taken, and a failed write removes the lock
and the partial output again (Redis does not roll back a script).
"""
from twisted.internet import defer

from minard.constants import (FINALISE_DELAY, HASH_INTERVALS, N_CHANNELS,
                              N_CHANNELS_PER_CARD, N_CARDS)
from minard.store import keys

MODES = ("ratio", "mean")

#: Values are stored with 15 significant digits: full double precision for any reader,
#: without the noise digits of %.17g.
VALUE_FORMAT = "%.15g"

CHANNELS_PER_CRATE = N_CARDS * N_CHANNELS_PER_CARD  # 512

FINALISE_SCRIPT = """
-- KEYS: lock, numerator, denominator, final, card:avg, card:max, crate:avg, crate:max
-- ARGV: mode ('ratio' | 'mean'), ttl (s)
-- Reads and arithmetic come first: an error there aborts before anything is written.
-- Writes go through pcall: if one fails, the lock and the partial output are removed.
local ttl = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
local nchannels = %(nchannels)d
local fmt = '%(fmt)s'
local num = redis.call('HGETALL', KEYS[2])
local idx, val = {}, {}

local function channel(field)
  local i = tonumber(field)
  if i and i >= 0 and i < nchannels and i == math.floor(i) then return i end
  return nil
end

if ARGV[1] == 'ratio' then
  local count = tonumber(redis.call('GET', KEYS[3]))
  if count and count > 0 then
    for k = 1, #num, 2 do
      local i, v = channel(num[k]), tonumber(num[k + 1])
      if i and v then
        idx[#idx + 1] = i
        val[#val + 1] = v / count
      end
    end
  end
elseif ARGV[1] == 'mean' then
  local den = redis.call('HGETALL', KEYS[3])
  local len = {}
  for k = 1, #den, 2 do len[den[k]] = tonumber(den[k + 1]) end
  for k = 1, #num, 2 do
    local n = len[num[k]]
    local i, v = channel(num[k]), tonumber(num[k + 1])
    if i and v and n and n > 0 then
      idx[#idx + 1] = i
      val[#val + 1] = v / n
    end
  end
else
  return redis.error_reply('unknown finalise mode ' .. tostring(ARGV[1]))
end

local failed = nil
local function w(...)
  if failed then return end
  local r = redis.pcall(...)
  if type(r) == 'table' and r.err then failed = r.err end
end

local function write(key, pairs)
  local chunk = {}
  for k = 1, #pairs do
    chunk[#chunk + 1] = pairs[k]
    if #chunk >= 1000 then
      w('HSET', key, unpack(chunk))
      chunk = {}
    end
  end
  if #chunk > 0 then w('HSET', key, unpack(chunk)) end
  w('EXPIRE', key, ttl)
end

local final = {}
local card_sum, card_n, card_max = {}, {}, {}
local crate_sum, crate_n, crate_max = {}, {}, {}
for k = 1, #idx do
  local i, v = idx[k], val[k]
  final[#final + 1] = string.format('%%d', i)
  final[#final + 1] = string.format(fmt, v)
  local card = i - i %% %(per_card)d
  local crate = (i - i %% %(per_crate)d) / %(per_crate)d
  card_sum[card] = (card_sum[card] or 0) + v
  card_n[card] = (card_n[card] or 0) + 1
  if card_max[card] == nil or v > card_max[card] then card_max[card] = v end
  crate_sum[crate] = (crate_sum[crate] or 0) + v
  crate_n[crate] = (crate_n[crate] or 0) + 1
  if crate_max[crate] == nil or v > crate_max[crate] then crate_max[crate] = v end
end
w('SET', KEYS[1], '1', 'EX', ttl)
if #idx == 0 then
  if failed then return redis.error_reply('finalise failed: ' .. failed) end
  return 1
end
write(KEYS[4], final)

local function rollup(sums, ns, maxes, avg_key, max_key)
  local avg, mx = {}, {}
  for f, s in pairs(sums) do
    local name = string.format('%%d', f)
    avg[#avg + 1] = name
    avg[#avg + 1] = string.format(fmt, s / ns[f])
    mx[#mx + 1] = name
    mx[#mx + 1] = string.format(fmt, maxes[f])
  end
  write(avg_key, avg)
  write(max_key, mx)
end
rollup(card_sum, card_n, card_max, KEYS[5], KEYS[6])
rollup(crate_sum, crate_n, crate_max, KEYS[7], KEYS[8])
if failed then
  redis.pcall('DEL', KEYS[1], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8])
  return redis.error_reply('finalise failed: ' .. failed)
end
return 1
""" % {"nchannels": N_CHANNELS, "fmt": VALUE_FORMAT, "per_card": N_CHANNELS_PER_CARD,
       "per_crate": CHANNELS_PER_CRATE}


def raw_keys(interval, b, name, mode):
    """(numerator, denominator) raw keys of a bucket."""
    if mode == "ratio":
        return keys.ts(interval, b, name + ":hits"), keys.ts(interval, b, name + ":count")
    return keys.ts(interval, b, name + ":sum"), keys.ts(interval, b, name + ":len")


def finalised_keys(interval, b, name):
    """The finalised hash and its roll-ups: (final, card:avg, card:max, crate:avg, crate:max)."""
    return (keys.ts(interval, b, name),
            keys.rollup(interval, b, name, "card", "avg"),
            keys.rollup(interval, b, name, "card", "max"),
            keys.rollup(interval, b, name, "crate", "avg"),
            keys.rollup(interval, b, name, "crate", "max"))


def due_bucket(interval, now, delay=FINALISE_DELAY):
    """The bucket of `interval` that becomes due at `now`: (now − delay) // H − 1.

    Bucket p is due once now >= (p+1)·H + delay, i.e. every worker has flushed into it.
    """
    return (int(now) - delay) // interval - 1


class Finaliser:
    """Finalises due buckets; safe to run in every worker at once."""

    def __init__(self, redis, intervals=HASH_INTERVALS, delay=FINALISE_DELAY):
        self.redis = redis
        self.intervals = tuple(intervals)
        self.delay = delay

    def finalise(self, name, mode, interval, b):
        """Deferred 1 if this call finalised bucket b, 0 if someone already had."""
        if mode not in MODES:
            raise ValueError("mode must be one of %s" % (MODES,))
        lock = keys.finalise_lock(interval, b, name)
        script_keys = ((lock,) + raw_keys(interval, b, name, mode)
                       + finalised_keys(interval, b, name))
        d = self.redis.eval(FINALISE_SCRIPT, list(script_keys),
                            [mode, str(keys.hash_ttl(interval))])
        d.addCallback(int)
        return d

    def finalise_due(self, name, mode, now):
        """Try the due bucket of every interval at `now`.

        Fires with {H: 1 finalised here | 0 already done}; fails with the first error
        (Redis away, script error) for the caller to count — it tries again next second.
        """
        ds = []
        for interval in self.intervals:
            ds.append(self.finalise(name, mode, interval, due_bucket(interval, now, self.delay)))
        d = defer.gatherResults(ds, consumeErrors=True)
        d.addCallback(lambda results: dict(zip(self.intervals, results)))
        d.addErrback(lambda f: f.value.subFailure if isinstance(f.value, defer.FirstError)
                     else f)
        return d


# -- pure-Python reference (tests compare the script against this) --------------------------

def reference(numerator, denominator, mode):
    """What the finalisation should store, from the raw contents.

    `numerator` is {channel: value} (hits or sum); `denominator` is the event count (int)
    for "ratio" or {channel: samples} for "mean". Returns (values, card_avg, card_max,
    crate_avg, crate_max), each {int field: float}.
    """
    values = {}
    for field, v in numerator.items():
        i = int(field)
        if mode == "ratio":
            if denominator and denominator > 0:
                values[i] = float(v) / denominator
        else:
            n = denominator.get(field, denominator.get(str(field)))
            if n is not None and float(n) > 0:
                values[i] = float(v) / float(n)
    groups = {"card": {}, "crate": {}}
    for i, v in values.items():
        groups["card"].setdefault(i - i % N_CHANNELS_PER_CARD, []).append(v)
        groups["crate"].setdefault(i // CHANNELS_PER_CRATE, []).append(v)
    out = [values]
    for level in ("card", "crate"):
        out.append({f: sum(vs) / len(vs) for f, vs in groups[level].items()})
        out.append({f: max(vs) for f, vs in groups[level].items()})
    return tuple(out)
