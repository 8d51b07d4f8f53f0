"""The one-shot migration of per-channel data from the old layout (one hash field per
channel under `ts:`) to the packed arrays (store/migrate.py), against a real Redis. The old
keys are written exactly as the old code wrote them: its finalisation script is below."""
import io
import math
import os
import subprocess
import sys

import numpy as np
from twisted.internet import defer
from twisted.trial import unittest

from minard import constants as C
from minard.services.web import StoreMigration
from minard.store import channels, keys, migrate
from minard.store.channels import ChannelStore, Finaliser
from minard.store.reads import Reads
from tests.support import REPO, RedisConnectionMixin, RedisTestMixin, free_port

N = C.N_CHANNELS
T = 1_700_000_000  # a second in bucket 340000000 (5 s), 28333333 (60 s), 19675 (1 day)

# -- the old code (git show HEAD~1:minard/store/finalise.py), as a fixture -----------------

OLD_FINALISE_SCRIPT = """
-- KEYS: lock, numerator, denominator, final, card:avg, card:max, crate:avg, crate:max
-- ARGV: mode ('ratio' | 'mean'), ttl (s)
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
""" % {"nchannels": N, "fmt": "%.15g", "per_card": C.N_CHANNELS_PER_CARD,
       "per_crate": C.N_CARDS * C.N_CHANNELS_PER_CARD}


def old_raw(name, H, b):
    if channels.MODES[name] == "ratio":
        return keys.ts(H, b, name + ":hits"), keys.ts(H, b, name + ":count")
    return keys.ts(H, b, name + ":sum"), keys.ts(H, b, name + ":len")


def old_final(name, H, b):
    return [keys.ts(H, b, name)] + [keys.rollup(H, b, name, level, m)
                                    for level in ("card", "crate") for m in ("avg", "max")]


def write_raw(sync, name, H, b, num, den):
    """What the old workers' flushes left: hits (HINCRBY) and the event count (INCRBY), or
    sums (HINCRBYFLOAT '%.17g', HINCRBY for base) and samples (HINCRBY); TTL H + 300.
    num: {channel: value}; den: events, or {channel: samples}."""
    num_key, den_key = old_raw(name, H, b)
    ttl = H + C.RAW_HASH_TTL_EXTRA
    fmt = "%d" if name in ("occupancy", "base") else "%.17g"
    flat = []
    for i, v in num.items():
        flat += [str(i), fmt % v]
    if flat:
        sync.command("HSET", num_key, *flat)
        sync.command("EXPIRE", num_key, ttl)
    if isinstance(den, dict):
        flat = []
        for i, n in den.items():
            flat += [str(i), str(n)]
        sync.command("HSET", den_key, *flat)
    else:
        sync.command("INCRBY", den_key, den)
    sync.command("EXPIRE", den_key, ttl)


def old_finalise(sync, name, H, b):
    """The old finaliser on bucket b (EVAL of its script)."""
    num_key, den_key = old_raw(name, H, b)
    mode = channels.MODES[name]
    return sync.command("EVAL", OLD_FINALISE_SCRIPT, 8, keys.finalise_lock(H, b, name),
                        num_key, den_key, *old_final(name, H, b), mode, H * C.HASH_EXPIRE)


def random_data(rng, name, n_channels, skip_crate=None):
    """({channel: numerator}, denominator) as the old workers summed them."""
    chans = rng.choice(N, n_channels, replace=False)
    if skip_crate is not None:
        chans = [c for c in chans if c >> 9 != skip_crate]
    if name == "occupancy":
        return {int(c): int(rng.integers(1, 60)) for c in chans}, int(rng.integers(500, 5000))
    lens = {int(c): int(rng.integers(1, 6)) for c in chans}
    if name == "cmos":
        return {c: float(rng.uniform(0, 3000) * n) for c, n in lens.items()}, lens
    return {c: int(rng.integers(-20, 100) * n) for c, n in lens.items()}, lens


def close(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(a), abs(b), 1e-30)


def hash_floats(sync, key):
    return {int(k): float(v) for k, v in sync.hgetall(key).items()}


COMPAT = {
    "string": ["ts:1:%d:heartbeat" % T, "ts:60:%d:L1" % (T // 60), "ts:1:%d:baseline-count" % T,
               "ts:2:%d:L2" % (T // 2), "heartbeat:builder", "dispatcher"],
    "hash": ["ts:1:%d:trig" % T, "ts:1:%d:trig:nhit" % T, "ts:1:%d:trig:charge" % T,
             "ts:5:%d:nhit:hist" % (T // 5), "ts:60:%d:nhit:hist" % (T // 60),
             # look like ours, but are not (no hash interval, no known suffix)
             "ts:4:%d:occupancy" % (T // 4), "ts:5:%d:occupancy:other" % (T // 5),
             "ts:5:%d:cmosx" % (T // 5)],
    "list": ["ts:1:%d:nhit" % T],
}


def write_compat(sync):
    for k in COMPAT["string"]:
        sync.command("SET", k, "17", "EX", 5000)
    for k in COMPAT["hash"]:
        sync.command("HSET", k, "1", "2", "TOTAL", "3")
        sync.command("EXPIRE", k, 6000)
    for k in COMPAT["list"]:
        sync.command("LPUSH", k, "5", "6")
    return snapshot(sync)


def snapshot(sync):
    out = {}
    for k in sum(COMPAT.values(), []):
        out[k] = (sync.command("DUMP", k), sync.command("TYPE", k))
    return out


class MigrateTests(RedisConnectionMixin, unittest.TestCase):
    def final(self, name, H, b):
        blob = self.sync.get_bytes("GET", keys.channel_final(name, H, b))
        return None if blob is None else channels.decode_final(blob)

    def old_buckets(self):
        """Old finalised buckets of every name and interval, as the old code left them
        (some with their raw keys still there). Returns {(name, H, b): info}."""
        rng = np.random.default_rng(11)
        out = {}
        specs = [("occupancy", 5, T // 5 - 1, N, None, True),   # every channel
                 ("occupancy", 5, T // 5 - 2, 4000, 19, False),  # crate 19 without data
                 ("occupancy", 60, T // 60 - 1, 3000, None, True),
                 ("occupancy", 86400, T // 86400 - 1, 5000, None, False),
                 ("cmos", 5, T // 5 - 1, N, None, True),
                 ("cmos", 60, T // 60 - 1, 2000, 3, False),
                 ("cmos", 86400, T // 86400 - 2, 800, None, False),
                 ("base", 5, T // 5 - 1, 6000, None, True),
                 ("base", 60, T // 60 - 1, 100, None, False)]
        for name, H, b, n, skip, keep_raw in specs:
            num, den = random_data(rng, name, n, skip)
            write_raw(self.sync, name, H, b, num, den)
            self.assertEqual(old_finalise(self.sync, name, H, b), 1)
            info = {"values": hash_floats(self.sync, keys.ts(H, b, name)),
                    "rollups": {k: hash_floats(self.sync, k) for k in old_final(name, H, b)[1:]},
                    "denominator": 0.0}
            self.assertTrue(info["values"])
            if keep_raw:
                info["denominator"] = float(den if name == "occupancy" else sum(den.values()))
            else:
                self.sync.command("DEL", *old_raw(name, H, b))
            out[(name, H, b)] = info
        # remaining TTLs to carry: one shortened, one without a TTL at all
        self.sync.command("PEXPIRE", keys.ts(5, T // 5 - 2, "occupancy"), 777777)
        self.sync.command("PERSIST", keys.ts(60, T // 60 - 1, "base"))
        for (name, H, b), info in out.items():
            info["pttl"] = self.sync.command("PTTL", keys.ts(H, b, name))
        # a bucket finalised without any data: only its lock
        self.sync.command("INCRBY", keys.ts(5, T // 5 - 3, "occupancy:count"), 0)
        self.assertEqual(old_finalise(self.sync, "occupancy", 5, T // 5 - 3), 1)
        return out

    def check_final(self, name, H, b, info):
        f = self.final(name, H, b)
        self.assertIsNotNone(f, (name, H, b))
        values = info["values"]
        got = {i: v for i, v in enumerate(f["values"]) if not math.isnan(v)}
        self.assertEqual(set(got), set(values))
        for i, v in values.items():
            self.assertTrue(close(got[i], v), (name, H, b, i, got[i], v))
        for key, old in info["rollups"].items():
            section = key.rsplit(":", 2)
            section = section[-2] + ":" + section[-1]
            new = f[section]
            present = {g: x for g, x in enumerate(new) if not math.isnan(x)}
            self.assertEqual(set(present), {(g >> 5 if section.startswith("card") else g)
                                            for g in old}, key)
            for g, x in old.items():
                group = g >> 5 if section.startswith("card") else g
                self.assertTrue(close(new[group], x), (key, g, new[group], x))
        self.assertEqual(f["denominator"], info["denominator"])

    @defer.inlineCallbacks
    def test_finalised_buckets(self):
        buckets = self.old_buckets()
        compat = write_compat(self.sync)
        counts = yield migrate.migrate(self.redis)
        self.assertEqual(counts["finalised"], len(buckets))
        self.assertEqual(counts["open"], 0)
        self.assertEqual(counts["corrupt"], 0)
        for (name, H, b), info in buckets.items():
            self.check_final(name, H, b, info)
            pttl = self.sync.command("PTTL", keys.channel_final(name, H, b))
            want = info["pttl"] if info["pttl"] > 0 else channels.final_ttl(H) * 1000
            self.assertTrue(want - 10000 <= pttl <= want, (name, H, b, pttl, want))
        self.assertIsNone(self.final("occupancy", 5, T // 5 - 3))  # no data: no bucket
        # every old per-channel key is gone; the compat keys are exactly as they were
        left = set()
        for pattern in migrate.PATTERNS:
            left |= set(self.sync.command("KEYS", pattern))
        self.assertEqual(left, {k for k in sum(COMPAT.values(), []) if k in left})
        self.assertEqual(snapshot(self.sync), compat)
        # finalised buckets are not reopened
        for name in channels.NAMES:
            self.assertEqual(self.sync.command("ZCARD", keys.channel_open(name)), 0)
        self.assertEqual(self.sync.command("KEYS", "minard:part:*"), [])
        # 9 hashes × (final + 4 roll-ups + lock) + 4 × 2 raw + the empty bucket's lock and count
        self.assertEqual(counts["deleted"], 9 * 6 + 4 * 2 + 2)
        blobs = {b: self.sync.get_bytes("GET", keys.channel_final(*b)) for b in buckets}
        again = yield migrate.migrate(self.redis)
        self.assertEqual(again, {"finalised": 0, "open": 0, "deleted": 0, "skipped": 0,
                                 "corrupt": 0})
        self.assertEqual({b: self.sync.get_bytes("GET", keys.channel_final(*b))
                          for b in buckets}, blobs)

    @defer.inlineCallbacks
    def test_new_bucket_is_not_overwritten(self):
        buckets = self.old_buckets()
        name, H, b = "cmos", 5, T // 5 - 1
        values = np.full(N, np.nan)
        values[7] = 42.0
        self.sync.command("SET", keys.channel_final(name, H, b), channels.encode_final(values, 1))
        counts = yield migrate.migrate(self.redis)
        self.assertEqual(counts["finalised"], len(buckets) - 1)
        self.assertEqual(counts["skipped"], 1)
        self.assertEqual(self.final(name, H, b)["values"][7], 42.0)
        self.assertEqual(self.sync.command("EXISTS", *old_final(name, H, b)), 0)

    @defer.inlineCallbacks
    def test_reads_give_the_old_values(self):
        buckets = self.old_buckets()
        yield migrate.migrate(self.redis)
        reads = Reads(self.redis)
        for (name, H, b), info in buckets.items():
            values = info["values"]
            step = H
            start, stop = (b - 2) * H, (b + 1) * H
            some = sorted(values)[:3] + sorted(values)[-2:]
            for i in some:
                crate, card, ch = i >> 9, (i >> 5) & 15, i & 31
                series = yield reads.hash_series(name, start, stop, step, crate, card, ch)
                self.assertIsNone(series[0])
                self.assertTrue(close(series[-1], values[i], 1e-6), (series, values[i]))
                for method in ("avg", "max"):
                    card_s = yield reads.hash_series(name, start, stop, step, crate, card,
                                                     method=method)
                    old = info["rollups"][keys.rollup(H, b, name, "card", method)]
                    self.assertTrue(close(card_s[-1], old[i - (i & 31)], 1e-6))
                    crate_s = yield reads.hash_series(name, start, stop, step, crate,
                                                      method=method)
                    old = info["rollups"][keys.rollup(H, b, name, "crate", method)]
                    self.assertTrue(close(crate_s[-1], old[crate], 1e-6))
            # the newest complete bucket at `now` is b
            now = (b + 1) * H + 1
            interval, bucket, latest = yield reads.latest_channels(name, H, now)
            self.assertEqual((interval, bucket), (H, b))
            self.assertEqual(sum(x is not None for x in latest), len(values))
            for i, v in values.items():
                self.assertTrue(close(latest[i], v, 1e-6))
            # OWL: the mean and max over the OWL channels with a value
            owl = [values[i] for i in C.OWL_CHANNELS if i in values]
            for method in ("avg", "max"):
                got = yield reads.owl_series(name, start, stop, step, method)
                if not owl:
                    self.assertIsNone(got[-1])
                else:
                    want = max(owl) if method == "max" else sum(owl) / len(owl)
                    self.assertTrue(close(got[-1], want, 1e-6), (got, want))

    @defer.inlineCallbacks
    def test_open_buckets_become_parts_and_finalise_with_new_data(self):
        rng = np.random.default_rng(5)
        second = T  # a second whose buckets were open when the old workers stopped
        old = {}
        for name in channels.NAMES:
            num, den = random_data(rng, name, 3000)
            for H in C.HASH_INTERVALS:
                write_raw(self.sync, name, H, second // H, num, den)
            old[name] = (num, den)
        # a new worker had already written the same buckets before the migration ran
        store = ChannelStore(self.redis, "W", list(channels.NAMES))
        new_hits = np.zeros(N)
        new_hits[[1, 2, 5000]] = [3, 4, 5]
        store["occupancy"].add_hits(second + 1, new_hits, 100)
        store["cmos"].add_samples(second + 1, [1, 2, 9000], [10.0, 20.0, 30.0])
        store["base"].add_samples(second + 1, [1, 2], [7, 8])
        for name in channels.NAMES:
            store[name].advance(second + 1)
        yield store.write()
        compat = write_compat(self.sync)
        counts = yield migrate.migrate(self.redis)
        self.assertEqual(counts["open"], 3 * len(C.HASH_INTERVALS))
        self.assertEqual(counts["finalised"], 0)
        self.assertEqual(counts["deleted"], 3 * len(C.HASH_INTERVALS) * 2)
        self.assertEqual(snapshot(self.sync), compat)
        for name in channels.NAMES:
            mode = channels.MODES[name]
            num, den = old[name]
            for H in C.HASH_INTERVALS:
                b = second // H
                part = keys.channel_part(name, H, b)
                self.assertEqual(self.sync.command("EXISTS", *old_raw(name, H, b)), 0)
                fields = self.sync.command("HKEYS", part)
                self.assertEqual(set(fields), {"W", "migrated", "~v"})
                self.assertEqual(self.sync.command("HGET", part, "~v"), "2")
                got_num, got_den = channels.decode_part(
                    self.sync.get_bytes("HGET", part, "migrated"), mode)
                want = np.zeros(N)
                want[list(num)] = list(num.values())
                self.assertTrue(np.array_equal(got_num, want))
                if mode == "ratio":
                    self.assertEqual(got_den, den)
                else:
                    want = np.zeros(N)
                    want[list(den)] = list(den.values())
                    self.assertTrue(np.array_equal(got_den, want))
                ttl = self.sync.command("TTL", part)
                self.assertTrue(channels.part_ttl(H) - 5 <= ttl <= channels.part_ttl(H))
                self.assertEqual(float(self.sync.command(
                    "ZSCORE", keys.channel_open(name), keys.bucket_member(H, b))),
                    (b + 1) * H - 1)
        # idempotent: the raw keys are gone, nothing is added twice
        again = yield migrate.migrate(self.redis)
        self.assertEqual(again["open"] + again["deleted"], 0)
        self.assertEqual(self.sync.command("HGET", keys.channel_part("cmos", 5, second // 5),
                                           "~v"), "2")
        # the new finaliser finalises them with the new worker's data once its progress
        # passes their end (the day too)
        day_end = (second // 86400 + 1) * 86400 - 1
        for name in channels.NAMES:
            store[name].advance(day_end)
        yield store.write()
        for name in channels.NAMES:
            self.assertEqual((yield Finaliser(self.redis, name, "F").finalise()),
                             len(C.HASH_INTERVALS))
        for H in C.HASH_INTERVALS:
            b = second // H
            num, events = old["occupancy"]
            f = self.final("occupancy", H, b)
            self.assertEqual(f["denominator"], events + 100)
            total = dict(num)
            for i, h in ((1, 3), (2, 4), (5000, 5)):
                total[i] = total.get(i, 0) + h
            got = {i: v for i, v in enumerate(f["values"]) if not math.isnan(v)}
            self.assertEqual(set(got), set(total))
            for i, h in total.items():
                self.assertTrue(close(got[i], h / (events + 100)))
            for name, new in (("cmos", {1: 10.0, 2: 20.0, 9000: 30.0}), ("base", {1: 7, 2: 8})):
                num, lens = old[name]
                f = self.final(name, H, b)
                self.assertEqual(f["denominator"], sum(lens.values()) + len(new))
                got = {i: v for i, v in enumerate(f["values"]) if not math.isnan(v)}
                self.assertEqual(set(got), set(lens) | set(new))
                for i in got:
                    want = (num.get(i, 0) + new.get(i, 0)) / (lens.get(i, 0) + (i in new))
                    self.assertTrue(close(got[i], want), (name, i, got[i], want))
            for name in channels.NAMES:
                self.assertIsNone(self.sync.command("ZSCORE", keys.channel_open(name),
                                                    keys.bucket_member(H, b)))

    @defer.inlineCallbacks
    def test_open_bucket_without_new_workers_waits_then_finalises(self):
        num, events = {3: 30, 700: 7}, 10
        write_raw(self.sync, "occupancy", 5, T // 5, num, events)
        counts = yield migrate.migrate(self.redis)
        self.assertEqual(counts["open"], 1)
        fin = Finaliser(self.redis, "occupancy", "F")
        self.assertEqual((yield fin.finalise()), 0)  # no writer yet: it stays open
        store = ChannelStore(self.redis, "W", ["occupancy"])
        store["occupancy"].advance(T // 5 * 5 + 4)
        yield store.write()
        self.assertEqual((yield fin.finalise()), 1)
        f = self.final("occupancy", 5, T // 5)
        self.assertEqual(f["values"][3], 3.0)
        self.assertTrue(close(f["values"][700], 0.7))
        self.assertEqual(int(np.sum(~np.isnan(f["values"]))), 2)

    @defer.inlineCallbacks
    def test_old_write_during_the_transaction_is_not_lost(self):
        """An old worker adds to the raw hash between the migration's read and its EXEC:
        the transaction fails and is done again from the new contents."""
        write_raw(self.sync, "occupancy", 5, T // 5, {3: 30}, 10)
        hits_key = old_raw("occupancy", 5, T // 5)[0]
        real_dense, calls = migrate.dense, []

        def dense(flat, fill=np.nan):
            calls.append(1)
            if len(calls) == 1:
                self.sync.command("HINCRBY", hits_key, "3", 12)
                self.sync.command("HINCRBY", hits_key, "4", 1)
            return real_dense(flat, fill)

        self.patch(migrate, "dense", dense)
        counts = yield migrate.migrate(self.redis)
        self.assertEqual(counts["open"], 1)
        self.assertGreaterEqual(len(calls), 2)
        num, events = channels.decode_part(self.sync.get_bytes(
            "HGET", keys.channel_part("occupancy", 5, T // 5), "migrated"), "ratio")
        self.assertEqual((num[3], num[4], events), (42, 1, 10))
        self.assertEqual(self.sync.command("HGET", keys.channel_part("occupancy", 5, T // 5),
                                           "~v"), "1")

    @defer.inlineCallbacks
    def test_raw_keys_that_reappear_are_added_to_the_migrated_part(self):
        write_raw(self.sync, "cmos", 60, T // 60, {3: 30.0}, {3: 3})
        yield migrate.migrate(self.redis)
        write_raw(self.sync, "cmos", 60, T // 60, {3: 10.0, 4: 8.0}, {3: 1, 4: 2})
        counts = yield migrate.migrate(self.redis)
        self.assertEqual(counts["open"], 1)
        num, lens = channels.decode_part(self.sync.get_bytes(
            "HGET", keys.channel_part("cmos", 60, T // 60), "migrated"), "mean")
        self.assertEqual((num[3], lens[3], num[4], lens[4]), (40.0, 4, 8.0, 2))

    @defer.inlineCallbacks
    def test_corrupt_values_are_counted_and_left_out(self):
        # a finalised hash with a value that is not a number, and a stray field
        write_raw(self.sync, "base", 5, T // 5 - 1, {1: 10, 2: 20}, {1: 2, 2: 4})
        old_finalise(self.sync, "base", 5, T // 5 - 1)
        self.sync.command("HSET", keys.ts(5, T // 5 - 1, "base"), "3", "xyz", "oops", "1",
                          "99999", "2")
        # raw: hits that are not numbers; raw hits without an event count; a count that
        # is not a number
        write_raw(self.sync, "occupancy", 5, T // 5, {1: 5, 2: 6}, 10)
        self.sync.command("HSET", keys.ts(5, T // 5, "occupancy:hits"), "7", "abc")
        self.sync.command("HSET", keys.ts(60, T // 60, "occupancy:hits"), "7", "5")
        self.sync.command("HSET", keys.ts(86400, T // 86400, "occupancy:hits"), "7", "5")
        self.sync.command("SET", keys.ts(86400, T // 86400, "occupancy:count"), "many")
        # a key of the old names that is not a hash (another program's): skipped
        self.sync.command("SET", keys.ts(5, T // 5 - 7, "cmos"), "hello")
        counts = yield migrate.migrate(self.redis)
        self.assertEqual(counts["finalised"], 1)
        self.assertEqual(counts["open"], 1)
        self.assertEqual(counts["corrupt"], 3 + 1 + 1)
        self.assertEqual(counts["skipped"], 3)
        f = self.final("base", 5, T // 5 - 1)
        self.assertEqual((f["values"][1], f["values"][2]), (5.0, 5.0))
        self.assertEqual(int(np.sum(~np.isnan(f["values"]))), 2)
        num, events = channels.decode_part(self.sync.get_bytes(
            "HGET", keys.channel_part("occupancy", 5, T // 5), "migrated"), "ratio")
        self.assertEqual((num[1], num[2], num[7], events), (5, 6, 0, 10))
        self.assertEqual(self.sync.command("EXISTS", keys.ts(60, T // 60, "occupancy:hits"),
                                           keys.ts(86400, T // 86400, "occupancy:hits")), 0)
        self.assertEqual(self.sync.command("ZCARD", keys.channel_open("occupancy")), 1)

    @defer.inlineCallbacks
    def test_short_commands_only(self):
        """The migration sends only short commands, whatever the bucket: SCAN and HSCAN
        in steps, no KEYS, no HGETALL, no script (INFO commandstats), and none that Redis
        logs as slow (SLOWLOG; 5 ms on a quiet machine, with room here for a loaded one)."""
        for name in channels.NAMES:
            num, den = random_data(np.random.default_rng(2), name, N)
            write_raw(self.sync, name, 5, T // 5, num, den)       # open, every channel
            write_raw(self.sync, name, 60, T // 60 - 1, num, den)  # finalised, every channel
            old_finalise(self.sync, name, 60, T // 60 - 1)
        before = self.sync.command("CONFIG", "GET", "slowlog-log-slower-than")[1]
        self.sync.command("CONFIG", "SET", "slowlog-log-slower-than",
                          int(os.environ.get("MINARD_TEST_SLOW_US", 25000)))
        self.addCleanup(self.sync.command, "CONFIG", "SET", "slowlog-log-slower-than", before)
        self.sync.command("SLOWLOG", "RESET")
        self.sync.command("CONFIG", "RESETSTAT")
        counts = yield migrate.migrate(self.redis)
        self.assertEqual((counts["open"], counts["finalised"]), (3, 3))
        stats = {}
        for line in self.sync.command("INFO", "commandstats").splitlines():
            if line.startswith("cmdstat_"):
                command, _, fields = line[len("cmdstat_"):].partition(":")
                stats[command.split("|")[0]] = dict(f.split("=") for f in fields.split(","))
        allowed = {"scan", "hscan", "exists", "pttl", "get", "set", "unlink", "watch",
                   "multi", "exec", "hget", "hset", "hincrby", "expire", "zadd", "unwatch",
                   "ping", "info", "config", "slowlog"}
        self.assertLessEqual(set(stats), allowed, stats)
        for command, fields in stats.items():
            self.assertLess(float(fields["usec_per_call"]), 2500, (command, fields))
        slow = [(entry[2], entry[3][:2]) for entry in self.sync.command("SLOWLOG", "GET", 100)]
        self.assertEqual(slow, [])

    @defer.inlineCallbacks
    def test_web_role_service_migrates_at_start(self):
        buckets = self.old_buckets()
        service = StoreMigration(self.redis)
        service.startService()
        yield service.done
        service.stopService()
        for (name, H, b), info in buckets.items():
            self.check_final(name, H, b, info)


class CommandTests(RedisTestMixin, unittest.TestCase):
    def run_main(self, *args):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                    else "")
        p = subprocess.run([sys.executable, "-c",
                            "from minard.store.migrate import main; main()"] + list(args),
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        return p.returncode, p.stdout, p.stderr

    def test_unreachable_redis(self):
        rc, out, err = self.run_main("--redis", "redis://127.0.0.1:%d/0" % free_port())
        self.assertEqual(rc, 1)
        self.assertEqual(out, "")
        self.assertEqual(len(err.splitlines()), 1, err)
        self.assertTrue(err.startswith("minard-migrate-store: error: "), err)

    def test_bad_url(self):
        for url in ("http://127.0.0.1:6379/0", "redis://127.0.0.1:port/0",
                    "redis://127.0.0.1:6379/zero"):
            rc, out, err = self.run_main("--redis", url)
            self.assertEqual(rc, 1, url)
            self.assertEqual(len(err.splitlines()), 1, err)
            self.assertTrue(err.startswith("minard-migrate-store: error: "), err)

    def test_main_in_process_exits_1(self):
        """main() itself ends with SystemExit(1) before the reactor is involved."""
        err = io.StringIO()
        self.patch(sys, "stderr", err)
        e = self.assertRaises(SystemExit, migrate.main, ["--redis", "nonsense"])
        self.assertEqual(e.code, 1)
        self.assertEqual(err.getvalue(), "minard-migrate-store: error: --redis: 'nonsense' "
                                         "is not a redis:// URL\n")

    def test_runs_and_prints_a_summary(self):
        write_raw(self.sync, "occupancy", 5, T // 5, {1: 2}, 4)
        write_raw(self.sync, "cmos", 5, T // 5 - 1, {1: 2.0}, {1: 1})
        old_finalise(self.sync, "cmos", 5, T // 5 - 1)
        rc, out, err = self.run_main("--redis", self.redis_server.url)
        self.assertEqual((rc, err), (0, ""))
        self.assertEqual(out.splitlines(), [
            "minard-migrate-store: 1 finalised buckets converted, 1 open buckets converted, "
            "10 old keys deleted, 0 buckets skipped, 0 corrupt values left out"])
        self.assertEqual(channels.decode_final(self.sync.get_bytes(
            "GET", keys.channel_final("cmos", 5, T // 5 - 1)))["values"][1], 2.0)
        rc, out, err = self.run_main("--redis", self.redis_server.url)
        self.assertEqual(rc, 0)
        self.assertIn("0 finalised buckets converted, 0 open", out)
