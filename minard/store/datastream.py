"""Redis side of the data stream (SPEC §3, §4): the shared CMOS previous-count state and
the per-second flush of CMOS-rate / base-current sums.

Both are Lua scripts, so each is one round trip and atomic:
* CMOS_RATES_SCRIPT reads the previous (count, time) of every channel of a batch of
  records, writes the new pairs and returns the rates. Any number of consumer workers may
  receive records of the same crate: each record sees the pair left by the record before
  it, whichever worker handled that one, and a record older than the stored pair (another
  worker was faster) neither produces a rate nor moves the state backwards.
* FLUSH_SCRIPT adds a worker's partial sums and sample counts into the raw bucket hashes
  `ts:H:b:<name>:sum` / `:len` of every hash interval, once per flush id (a flush retried
  after a lost reply is not counted twice).

Binary blobs carry the numbers both ways (no float formatting, no per-value arguments).
"""
import numpy as np

from minard import constants as C
from minard.store import keys

#: Per channel sent to the CMOS script: index u16, count u32, masked-in u8.
CMOS_IN = np.dtype([("index", ">u2"), ("count", ">u4"), ("masked_in", "u1")])
#: Per rate returned: index u16, rate (Hz) float64.
CMOS_OUT = np.dtype([("index", ">u2"), ("rate", ">f8")])
#: Per channel flushed: index u16, sum float64, samples u32.
FLUSH_IN = np.dtype([("index", ">u2"), ("sum", ">f8"), ("len", ">u4")])

CMOS_RATES_SCRIPT = """
-- KEYS: count hash, timestamp hash of each record (2 per record)
-- ARGV: state ttl, then per record: receipt time (int ns, decimal), channels blob
-- returns per record a blob of (index u16, rate f64) for the channels given a rate
local ttl = tonumber(ARGV[1])
local max_dt = %(max_dt)d

local function split(ns)
  -- exact seconds and nanoseconds of a decimal int64 ns string (doubles hold 2^53)
  local n = #ns
  if n <= 9 then return 0, tonumber(ns) end
  return tonumber(string.sub(ns, 1, n - 9)), tonumber(string.sub(ns, n - 8))
end

local out = {}
for r = 1, (#ARGV - 1) / 2 do
  local ckey, tkey = KEYS[2 * r - 1], KEYS[2 * r]
  local now = ARGV[2 * r]
  local blob = ARGV[2 * r + 1]
  local sec, nsec = split(now)
  local n = #blob / 7
  local rates = {}
  if n > 0 then
    local fields, counts, masked = {}, {}, {}
    local pos = 1
    for j = 1, n do
      local idx, cnt, m
      idx, cnt, m, pos = struct.unpack('>I2I4B', blob, pos)
      fields[j] = string.format('%%d', idx)
      counts[j] = cnt
      masked[j] = m
    end
    local pc = redis.call('HMGET', ckey, unpack(fields))
    local pt = redis.call('HMGET', tkey, unpack(fields))
    local newc, newt = {}, {}
    for j = 1, n do
      local write = true
      if pc[j] and pt[j] then
        local psec, pnsec = split(pt[j])
        local dt = (sec - psec) + (nsec - pnsec) / 1e9
        if dt <= 0 then
          write = false  -- an older record than the stored one: stale, ignore it
        elseif masked[j] == 1 and dt < max_dt then
          local prev = tonumber(pc[j])
          if prev and counts[j] > prev then
            rates[#rates + 1] = struct.pack('>I2d', tonumber(fields[j]), (counts[j] - prev) / dt)
          end
        end
      end
      if write then
        newc[#newc + 1] = fields[j]
        newc[#newc + 1] = string.format('%%d', counts[j])
        newt[#newt + 1] = fields[j]
        newt[#newt + 1] = now
      end
    end
    if #newc > 0 then
      redis.call('HSET', ckey, unpack(newc))
      redis.call('HSET', tkey, unpack(newt))
    end
    redis.call('EXPIRE', ckey, ttl)
    redis.call('EXPIRE', tkey, ttl)
  end
  out[r] = table.concat(rates)
end
return out
""" % {"max_dt": C.CMOS_MAX_DT}

FLUSH_SCRIPT = """
-- KEYS: flush marker, then a (sum hash, len hash) pair per target bucket
-- ARGV: marker ttl, number of groups, then per group: blob, number of targets, their ttls
-- Every target of a group receives the group's blob of (index u16, sum f64, len u32).
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local a, k = 3, 2
for g = 1, tonumber(ARGV[2]) do
  local blob = ARGV[a]
  local ntargets = tonumber(ARGV[a + 1])
  local n = #blob / 14
  local fields, sums, lens = {}, {}, {}
  local pos = 1
  for j = 1, n do
    local idx, s, l
    idx, s, l, pos = struct.unpack('>I2dI4', blob, pos)
    fields[j] = string.format('%d', idx)
    sums[j] = string.format('%.17g', s)
    lens[j] = l
  end
  for t = 1, ntargets do
    local skey, lkey, ttl = KEYS[k], KEYS[k + 1], ARGV[a + 1 + t]
    for j = 1, n do
      redis.call('HINCRBYFLOAT', skey, fields[j], sums[j])
      redis.call('HINCRBY', lkey, fields[j], lens[j])
    end
    redis.call('EXPIRE', skey, ttl)
    redis.call('EXPIRE', lkey, ttl)
    k = k + 2
  end
  a = a + 2 + ntargets
end
return 1
"""

#: A flush marker outlives any retry of its flush.
FLUSH_MARKER_TTL = 3600


def _as_bytes(reply):
    """A bulk reply as bytes (txredisapi hands back valid UTF-8 as str)."""
    if isinstance(reply, str):
        return reply.encode("utf-8")
    return bytes(reply or b"")


def raw_ttl(interval):
    return interval + C.RAW_HASH_TTL_EXTRA


def sum_keys(interval, b, name):
    return keys.ts(interval, b, name + ":sum"), keys.ts(interval, b, name + ":len")


class CmosState:
    """The shared previous (count, time) of every CMOS channel."""

    def __init__(self, redis, ttl=C.CMOS_STATE_TTL):
        self.redis = redis
        self.ttl = ttl

    def rates(self, records):
        """`records`: list of (crate, receipt_ns, index, count, masked_in) arrays, only
        channels whose count is valid. Deferred list, per record, of (index, rate) arrays
        for the channels that have a rate."""
        script_keys, args = [], [str(self.ttl)]
        for crate, receipt_ns, index, count, masked_in in records:
            script_keys += [keys.cmos_count(crate), keys.cmos_timestamp(crate)]
            blob = np.empty(len(index), dtype=CMOS_IN)
            blob["index"] = index
            blob["count"] = count
            blob["masked_in"] = masked_in
            args += [str(int(receipt_ns)), blob.tobytes()]
        d = self.redis.eval(CMOS_RATES_SCRIPT, script_keys, args)
        d.addCallback(self._decode)
        return d

    @staticmethod
    def _decode(reply):
        out = []
        for item in reply:
            data = np.frombuffer(_as_bytes(item), dtype=CMOS_OUT)
            out.append((data["index"].astype(np.int64), data["rate"].astype(np.float64)))
        return out


def flush_args(flush_id, groups, intervals=C.HASH_INTERVALS):
    """KEYS and ARGV of FLUSH_SCRIPT.

    `groups`: list of (name, t, index, sums, lens), t any second of the bucket the values
    belong to; every interval's bucket of t receives them.
    """
    script_keys = [keys.flush_marker(flush_id)]
    args = [str(FLUSH_MARKER_TTL), str(len(groups))]
    for name, t, index, sums, lens in groups:
        blob = np.empty(len(index), dtype=FLUSH_IN)
        blob["index"] = index
        blob["sum"] = sums
        blob["len"] = lens
        args += [blob.tobytes(), str(len(intervals))]
        for interval in intervals:
            script_keys += list(sum_keys(interval, int(t) // interval, name))
            args.append(str(raw_ttl(interval)))
    return script_keys, args


class SumsStore:
    """Adds partial per-channel sums into the raw hash buckets, one round trip a flush."""

    def __init__(self, redis, intervals=C.HASH_INTERVALS):
        self.redis = redis
        self.intervals = tuple(intervals)

    def flush(self, flush_id, groups):
        """Deferred 1 if applied, 0 if this flush id was applied before."""
        script_keys, args = flush_args(flush_id, groups, self.intervals)
        d = self.redis.eval(FLUSH_SCRIPT, script_keys, args)
        d.addCallback(int)
        return d
