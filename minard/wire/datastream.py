"""The data-server link (SPEC §2.4): framing, the SCmd/SRsp subscription, and the CMOS
and BASE payloads. Pure: bytes in, records and numpy arrays out; no I/O, no reactor.

Every message in both directions is a 12-byte big-endian record header (RecordID,
RecordLength = payload bytes, RecordVersion) followed by the payload.
"""
import struct
from collections import namedtuple

import numpy as np

from minard import constants as C

HEADER = struct.Struct(">III")
HEADER_SIZE = HEADER.size  # 12
STAMP = struct.Struct(">q")  # ZeroMQ frame 0: receipt time, int64 ns

#: One framed message: the record id (int), its version and its payload (bytes).
Frame = namedtuple("Frame", "record_id version payload")


class CorruptStream(ValueError):
    """The byte stream cannot be framed any further (the connection must be dropped).

    `frames`: the complete frames that came before the corruption in the same feed();
    they were received intact and must not be lost with the connection.
    """

    def __init__(self, message, frames=()):
        ValueError.__init__(self, message)
        self.frames = list(frames)


class CorruptRecord(ValueError):
    """One record's payload is malformed. `kind` names the problem, for per-kind counts."""

    def __init__(self, kind, message):
        ValueError.__init__(self, message)
        self.kind = kind


def record_name(record_id):
    """'CMOS' for 0x434D4F53; a hex number when the id is not four printable bytes."""
    raw = struct.pack(">I", record_id & 0xFFFFFFFF)
    text = raw.decode("ascii", "replace")
    if all(32 <= b < 127 for b in raw):
        return text
    return "0x%08X" % record_id


def record_id(name):
    """0x434D4F53 for 'CMOS' (four ASCII characters, read big-endian)."""
    raw = name.encode("ascii")
    if len(raw) != 4:
        raise ValueError("a record id is four characters: %r" % (name,))
    return struct.unpack(">I", raw)[0]


def encode_record(record_id, version, payload):
    """The bytes of one message: header + payload."""
    return HEADER.pack(record_id, len(payload), version) + bytes(payload)


class FrameDecoder:
    """Incremental framing: `feed(data)` returns the complete frames seen so far.

    A length above `max_size` makes the stream unframable: CorruptStream is raised and
    the decoder refuses further input (the caller drops the connection).
    """

    def __init__(self, max_size=C.MAX_RECORD_SIZE):
        self.max_size = max_size
        self._buffer = bytearray()
        self._broken = None

    @property
    def buffered(self):
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)

    def feed(self, data):
        if self._broken is not None:
            raise CorruptStream(self._broken)
        buf = self._buffer
        buf += data
        frames = []
        offset = 0
        end = len(buf)
        while end - offset >= HEADER_SIZE:
            rid, length, version = HEADER.unpack_from(buf, offset)
            if length > self.max_size:
                self._broken = "record %s of %d bytes is larger than %d" % (
                    record_name(rid), length, self.max_size)
                del buf[:]
                raise CorruptStream(self._broken, frames)
            stop = offset + HEADER_SIZE + length
            if stop > end:
                break
            frames.append(Frame(rid, version, bytes(buf[offset + HEADER_SIZE:stop])))
            offset = stop
        if offset:
            del buf[:offset]
        return frames


def split_records(data):
    """Complete records concatenated in `data` (a ZeroMQ frame may hold one or more).

    Raises CorruptRecord('truncated') when the last record is cut short.
    """
    records = []
    offset = 0
    end = len(data)
    while offset < end:
        if end - offset < HEADER_SIZE:
            raise CorruptRecord("truncated", "%d stray bytes after the last record"
                                % (end - offset))
        rid, length, version = HEADER.unpack_from(data, offset)
        stop = offset + HEADER_SIZE + length
        if stop > end:
            raise CorruptRecord("truncated", "record %s says %d bytes, %d present" % (
                record_name(rid), length, end - offset - HEADER_SIZE))
        records.append(Frame(rid, version, data[offset + HEADER_SIZE:stop]))
        offset = stop
    return records


# -- subscription ---------------------------------------------------------------------------

#: RecordVersion of a subscription command (kSub).
SUBSCRIBE_VERSION = 0


def encode_subscribe(record_ids):
    """The SCmd message asking for `record_ids` (ints), replacing any earlier subscription."""
    payload = b"".join(struct.pack(">I", rid) for rid in record_ids)
    return encode_record(C.RECORD_SCMD, SUBSCRIBE_VERSION, payload)


def decode_subscribe(payload):
    """The record ids (ints) of an SCmd payload."""
    if len(payload) % 4:
        raise CorruptRecord("bad_subscription",
                            "SCmd payload of %d bytes is not a list of 4-byte ids"
                            % len(payload))
    return list(struct.unpack(">%dI" % (len(payload) // 4), payload))


def encode_response(message, version=C.RECORD_SCMD):
    """An SRsp message: the NUL-terminated text. Success is 'OK' with version 'SCmd'."""
    return encode_record(C.RECORD_SRSP, version, message.encode("ascii", "replace") + b"\0")


def decode_response(payload):
    """The text of an SRsp payload (up to the first NUL; unprintables replaced)."""
    text = bytes(payload).split(b"\0", 1)[0]
    return text.decode("ascii", "replace")


def response_ok(payload):
    return decode_response(payload) == "OK"


# -- CMOS and BASE payloads -----------------------------------------------------------------

_MASKS = np.dtype([("crate", ">u4"), ("slot_mask", ">u4"), ("channel_masks", ">u4", (16,)),
                   ("error_flags", ">u4")])
CMOS_DTYPE = np.dtype(_MASKS.descr + [("counts", ">u4", (C.CMOS_COUNT_SLOTS * 32,)),
                                      ("busy", ">u4", (16,))])
BASE_DTYPE = np.dtype(_MASKS.descr + [("currents", "u1", (16 * 32,)),
                                      ("busy", "u1", (16 * 32,))])
assert CMOS_DTYPE.itemsize == C.CMOS_PAYLOAD_SIZE
assert BASE_DTYPE.itemsize == C.BASE_PAYLOAD_SIZE

_SLOTS = np.arange(16, dtype=np.uint32)
_CHANNELS = np.arange(32, dtype=np.uint32)
#: bit c of a channel mask -> channel c
_BITS = np.uint32(1) << _CHANNELS


def _check_header(rec, kind):
    crate = int(rec["crate"])
    if crate >= C.N_CRATES:
        raise CorruptRecord("bad_crate", "%s record for crate %d (0-%d)"
                            % (kind, crate, C.N_CRATES - 1))
    slot_mask = int(rec["slot_mask"])
    if slot_mask >> 16:
        raise CorruptRecord("bad_slot_mask", "%s record slot mask 0x%08X has bits above 15"
                            % (kind, slot_mask))
    return crate, slot_mask


#: The channels of one CMOS record that carry a count.
CmosCounts = namedtuple("CmosCounts", "crate index count valid masked_in truncated_slots")


def decode_cmos(payload):
    """The counts of a CMOS payload, one entry per channel of each counted slot.

    Only the first CMOS_COUNT_SLOTS (8) slots set in the slot mask, in ascending order,
    have counts; `truncated_slots` says how many further set slots went without.
    `index` is the channel index (crate<<9 | slot<<5 | channel), `count` the raw 32-bit
    word, `valid` its bit 31 clear, `masked_in` the channel's mask bit set.
    """
    if len(payload) != C.CMOS_PAYLOAD_SIZE:
        raise CorruptRecord("bad_length", "CMOS payload of %d bytes (expected %d)"
                            % (len(payload), C.CMOS_PAYLOAD_SIZE))
    rec = np.frombuffer(payload, dtype=CMOS_DTYPE, count=1)[0]
    crate, slot_mask = _check_header(rec, "CMOS")
    slots = _SLOTS[(slot_mask >> _SLOTS) & 1 == 1]
    truncated = max(0, len(slots) - C.CMOS_COUNT_SLOTS)
    slots = slots[:C.CMOS_COUNT_SLOTS]
    n = len(slots) * 32
    counts = rec["counts"][:n].astype(np.uint32)
    index = ((np.uint32(crate) << 9) | (slots[:, None] << 5) | _CHANNELS[None, :]).ravel()
    masks = rec["channel_masks"].astype(np.uint32)[slots]
    masked_in = ((masks[:, None] & _BITS[None, :]) != 0).ravel()
    valid = (counts & np.uint32(C.CMOS_INVALID_BIT)) == 0
    return CmosCounts(crate, index.astype(np.uint16), counts, valid, masked_in, truncated)


#: The currents of one BASE record, masked-in channels of present slots only.
BaseCurrents = namedtuple("BaseCurrents", "crate index current")


def decode_base(payload):
    """Base currents (raw − 127) of the masked-in channels of the present slots.

    Currents are indexed by slot number (slot·32 + channel), not packed like CMOS counts.
    """
    if len(payload) != C.BASE_PAYLOAD_SIZE:
        raise CorruptRecord("bad_length", "BASE payload of %d bytes (expected %d)"
                            % (len(payload), C.BASE_PAYLOAD_SIZE))
    rec = np.frombuffer(payload, dtype=BASE_DTYPE, count=1)[0]
    crate, slot_mask = _check_header(rec, "BASE")
    present = ((slot_mask >> _SLOTS) & 1 == 1)
    masks = rec["channel_masks"].astype(np.uint32)
    use = (((masks[:, None] & _BITS[None, :]) != 0) & present[:, None]).ravel()
    local = np.flatnonzero(use).astype(np.uint16)
    current = rec["currents"][use].astype(np.float64) - C.BASE_CURRENT_OFFSET
    return BaseCurrents(crate, (np.uint16(crate << 9) | local), current)


# -- building payloads (the simulator and the tests) ----------------------------------------

def encode_cmos(crate, slot_mask, channel_masks, counts, error_flags=0, busy=None):
    """A CMOS payload. `counts` holds up to 256 words: 32 per counted slot, packed."""
    rec = np.zeros(1, dtype=CMOS_DTYPE)
    rec["crate"] = crate
    rec["slot_mask"] = slot_mask
    rec["channel_masks"] = channel_masks
    rec["error_flags"] = error_flags
    counts = np.asarray(counts, dtype=np.uint64).astype(np.uint32)
    rec["counts"][0, :len(counts)] = counts
    if busy is not None:
        rec["busy"] = busy
    return rec.tobytes()


def encode_base(crate, slot_mask, channel_masks, raw_currents, error_flags=0, busy=None):
    """A BASE payload. `raw_currents` is 512 bytes indexed slot·32 + channel (raw, +127)."""
    rec = np.zeros(1, dtype=BASE_DTYPE)
    rec["crate"] = crate
    rec["slot_mask"] = slot_mask
    rec["channel_masks"] = channel_masks
    rec["error_flags"] = error_flags
    rec["currents"] = np.asarray(raw_currents, dtype=np.uint8)
    if busy is not None:
        rec["busy"] = busy
    return rec.tobytes()
