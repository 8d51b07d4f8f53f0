"""Redis side of the data stream (SPEC §3, §4): the shared CMOS previous-count state and
the per-second flush of CMOS-rate / base-current sums.

Both are Lua scripts, so each is one round trip and atomic:
* CMOS_STATE_SCRIPT swaps in the new (count, receipt time) of every channel of a batch of
  records and returns, per record, the state it found: the rates are computed from that
  in Python (numpy, exact integer nanoseconds). Any number of consumer workers may receive
  records of the same crate: each record sees the pair left by the record before it,
  whichever worker handled that one, and a record older than a stored pair (another worker
  was faster) neither produces a rate for that channel nor moves its state backwards. An
  invalid count (bit 31) carries no information: it gives no rate and leaves the last
  valid pair in place, so the next valid count is rated against it.
* FLUSH_SCRIPT adds a worker's partial sums and sample counts into the raw bucket hashes
  `ts:H:b:<name>:sum` / `:len` of every hash interval, once per flush id (a flush retried
  after a lost reply is not counted twice).

Binary blobs carry the numbers both ways (no float formatting, no per-value arguments).
The CMOS state is kept per crate in the hash `cmos:state:<crate>`, one field per slot,
whose value packs big-endian u32s: the latest receipt time stored in the slot (seconds,
nanoseconds), the 32 counts, then the 32 channels' receipt times (seconds, nanoseconds).
A record touches at most 8 fields instead of 512 per-channel ones (per-channel fields
cost ~2 ms of Redis time per record in a listpack-encoded hash), and the usual record
(all counts valid, newer than the slot) is stored with string operations alone.
"""
import numpy as np

from minard import constants as C
from minard.store import keys

#: A slot's stored state (see above).
SLOT_STATE = np.dtype([("sec", ">u4"), ("nsec", ">u4"), ("count", ">u4", (32,)),
                       ("times", ">u4", (32, 2))])
SLOT_STATE_SIZE = SLOT_STATE.itemsize  # 392
#: What the script receives per slot: slot, all counts valid?, 32 counts, 32 valid flags.
SLOT_INPUT = np.dtype([("slot", "u1"), ("all_valid", "u1"), ("count", ">u4", (32,)),
                       ("valid", "u1", (32,))])
#: Per channel flushed: index u16, sum float64, samples u32.
FLUSH_IN = np.dtype([("index", ">u2"), ("sum", ">f8"), ("len", ">u4")])
NS = 1_000_000_000

CMOS_STATE_SCRIPT = """
-- KEYS: the state hash of each record's crate
-- ARGV: state ttl, then per record: receipt seconds, nanoseconds, slots blob
--   (per slot: slot u8, all-valid u8, 32 counts u32, 32 valid flags u8)
-- returns per record the concatenated states its slots had before it (zeros if none)
local ttl = tonumber(ARGV[1])
local size = %(state_size)d
local insize = %(input_size)d
local zero = string.rep('\0', size)
local full_fmt = '>' .. string.rep('I4', 98)
local in_fmt = '>' .. string.rep('I4', 32) .. string.rep('B', 32)

local out = {}
for r = 1, #KEYS do
  local key = KEYS[r]
  local sec, nsec = tonumber(ARGV[3 * r - 1]), tonumber(ARGV[3 * r])
  local stamp = struct.pack('>I4I4', sec, nsec)
  local blob = ARGV[3 * r + 1]
  local nslots = #blob / insize
  local olds = {}
  if nslots > 0 then
    local fields = {}
    for j = 1, nslots do
      fields[j] = tostring(string.byte(blob, (j - 1) * insize + 1))
    end
    local stored = redis.call('HMGET', key, unpack(fields))
    local updates = {}
    for j = 1, nslots do
      local base = (j - 1) * insize
      local old = stored[j]
      if not old or #old ~= size then old = zero end
      local ms, mn = struct.unpack('>I4I4', old)
      local fresh = sec > ms or (sec == ms and nsec > mn)
      local new
      if fresh and string.byte(blob, base + 2) == 1 then
        -- every count valid and newer than anything stored: all 32 pairs are replaced
        new = stamp .. string.sub(blob, base + 3, base + 130) .. string.rep(stamp, 32)
      else
        local o = {struct.unpack(full_fmt, old)}
        local inp = {struct.unpack(in_fmt, blob, base + 3)}
        if fresh then o[1], o[2] = sec, nsec end
        for c = 1, 32 do
          -- channel c: count at o[2 + c], time at o[33 + 2c], o[34 + 2c]
          local ps, pn = o[33 + 2 * c], o[34 + 2 * c]
          if inp[32 + c] == 1 and (sec > ps or (sec == ps and nsec > pn)) then
            o[2 + c] = inp[c]
            o[33 + 2 * c], o[34 + 2 * c] = sec, nsec
          end
        end
        o[99] = nil  -- the position struct.unpack appends
        new = struct.pack(full_fmt, unpack(o))
      end
      olds[j] = old
      updates[2 * j - 1] = fields[j]
      updates[2 * j] = new
    end
    redis.call('HSET', key, unpack(updates))
    redis.call('EXPIRE', key, ttl)
  end
  out[r] = table.concat(olds)
end
return out
""" % {"state_size": SLOT_STATE_SIZE, "input_size": SLOT_INPUT.itemsize}

FLUSH_SCRIPT = """
-- KEYS: flush marker, then a (sum hash, len hash) pair per target bucket
-- ARGV: marker ttl, number of groups, then per group: blob, integer sums (1/0), number
--   of targets, their ttls
-- Every target of a group receives the group's blob of (index u16, sum f64, len u32);
-- integer sums (base currents) go in with HINCRBY, which is cheaper than HINCRBYFLOAT.
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
local a, k = 3, 2
for g = 1, tonumber(ARGV[2]) do
  local blob = ARGV[a]
  local integer = ARGV[a + 1] == '1'
  local ntargets = tonumber(ARGV[a + 2])
  local sum_fmt, incr = '%.17g', 'HINCRBYFLOAT'
  if integer then sum_fmt, incr = '%d', 'HINCRBY' end
  local n = #blob / 14
  local fields, sums, lens = {}, {}, {}
  local pos = 1
  for j = 1, n do
    local idx, s, l
    idx, s, l, pos = struct.unpack('>I2dI4', blob, pos)
    fields[j] = string.format('%d', idx)
    sums[j] = string.format(sum_fmt, s)
    lens[j] = l
  end
  for t = 1, ntargets do
    local skey, lkey, ttl = KEYS[k], KEYS[k + 1], ARGV[a + 2 + t]
    for j = 1, n do
      redis.call(incr, skey, fields[j], sums[j])
      redis.call('HINCRBY', lkey, fields[j], lens[j])
    end
    redis.call('EXPIRE', skey, ttl)
    redis.call('EXPIRE', lkey, ttl)
    k = k + 2
  end
  a = a + 3 + ntargets
end
return 1
"""

#: Quantities whose values are whole numbers (base currents: raw − 127), summed exactly
#: with HINCRBY. Every writer of a name must agree (HINCRBY refuses a float field).
INTEGER_SUMS = frozenset(["base"])
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


def slot_input(slots, counts, valid):
    """The state script's blob for one record."""
    n = len(slots)
    blob = np.empty(n, dtype=SLOT_INPUT)
    blob["slot"] = slots
    blob["count"] = np.asarray(counts).reshape(n, 32)
    valid = np.asarray(valid, dtype=bool).reshape(n, 32)
    blob["valid"] = valid
    blob["all_valid"] = valid.all(axis=1)
    return blob.tobytes()


def decode_slot_state(blob):
    """A stored slot state as arrays count, receipt ns (0 = no previous count)."""
    state = np.frombuffer(blob, dtype=SLOT_STATE)
    times = state["times"].astype(np.int64)
    return (state["count"].astype(np.int64).ravel(),
            (times[..., 0] * NS + times[..., 1]).ravel())


def cmos_rates(receipt_ns, count, valid, masked_in, prev_count, prev_ns,
               max_dt=C.CMOS_MAX_DT):
    """Rates (Hz) of one record's channels from the previous pairs, NaN where none (SPEC
    §3): a valid, masked-in count above a previous one from 0 < Δt < max_dt seconds ago."""
    dt_ns = np.int64(receipt_ns) - prev_ns
    count = np.asarray(count, dtype=np.int64)
    ok = (np.asarray(valid, dtype=bool) & np.asarray(masked_in, dtype=bool) & (prev_ns > 0)
          & (dt_ns > 0) & (dt_ns < max_dt * NS) & (count > prev_count))
    rate = np.full(len(count), np.nan)
    rate[ok] = (count[ok] - prev_count[ok]) / (dt_ns[ok] / NS)
    return rate


class CmosState:
    """The shared previous (count, time) of every CMOS channel."""

    def __init__(self, redis, ttl=C.CMOS_STATE_TTL):
        self.redis = redis
        self.ttl = ttl

    def rates(self, records):
        """`records`: list of (crate, receipt_ns, index, count, valid, masked_in), the
        arrays covering whole slots (32 channels each, as a CMOS record does). Deferred
        list, per record, of (index, rate) arrays for the channels that have a rate."""
        script_keys, args = [], [str(self.ttl)]
        for crate, receipt_ns, index, count, valid, masked_in in records:
            script_keys.append(keys.cmos_state(crate))
            slots = (np.asarray(index[::32]) >> 5) & 0xF
            sec, nsec = divmod(int(receipt_ns), NS)
            args += [str(sec), str(nsec), slot_input(slots, count, valid)]
        d = self.redis.eval(CMOS_STATE_SCRIPT, script_keys, args)
        d.addCallback(self._rates, records)
        return d

    @staticmethod
    def _rates(reply, records):
        out = []
        for item, (crate, receipt_ns, index, count, valid, masked_in) in zip(reply, records):
            prev_count, prev_ns = decode_slot_state(_as_bytes(item))
            rate = cmos_rates(receipt_ns, count, valid, masked_in, prev_count, prev_ns)
            has = ~np.isnan(rate)
            out.append((np.asarray(index, dtype=np.int64)[has], rate[has]))
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
        args += [blob.tobytes(), "1" if name in INTEGER_SUMS else "0", str(len(intervals))]
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
