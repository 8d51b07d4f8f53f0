"""Redis side of the data stream (SPEC §3, §4): the shared CMOS previous-count state.
(CMOS rates and base currents themselves go to the per-channel store, store/channels.py.)

cmos_state.lua is one round trip and atomic: it swaps in the new (count, receipt time) of every channel of a batch of
  records and returns, per record, the state it found: the rates are computed from that
  in Python (numpy, exact integer nanoseconds). Any number of consumer workers may receive
  records of the same crate: each record sees the pair left by the record before it,
  whichever worker handled that one, and a record older than a stored pair (another worker
  was faster) neither produces a rate for that channel nor moves its state backwards. An
  invalid count (bit 31) carries no information: it gives no rate and leaves the last
valid pair in place, so the next valid count is rated against it.

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
from minard.store.scripts import Script

#: A slot's stored state (see above).
SLOT_STATE = np.dtype([("sec", ">u4"), ("nsec", ">u4"), ("count", ">u4", (32,)),
                       ("times", ">u4", (32, 2))])
SLOT_STATE_SIZE = SLOT_STATE.itemsize  # 392
#: What the script receives per slot: slot, all counts valid?, 32 counts, 32 valid flags.
SLOT_INPUT = np.dtype([("slot", "u1"), ("all_valid", "u1"), ("count", ">u4", (32,)),
                       ("valid", "u1", (32,))])
NS = 1_000_000_000

CMOS_STATE_SCRIPT = Script("cmos_state.lua", state_size=SLOT_STATE_SIZE,
                           input_size=SLOT_INPUT.itemsize)

def _as_bytes(reply):
    """A bulk reply as bytes (txredisapi hands back valid UTF-8 as str)."""
    if isinstance(reply, str):
        return reply.encode("utf-8")
    return bytes(reply or b"")


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
        d = CMOS_STATE_SCRIPT(self.redis, script_keys, args)
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
