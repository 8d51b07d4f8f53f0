"""ControlHost dispatcher framing (SPEC §2.1), both dialects. Bytes in, frames out.

Every message, both directions, is a prefix (tag, 8 ASCII bytes NUL-padded; size, int32
big-endian; for the ligier dialect 4 more zero bytes) followed by `size` payload bytes.
"""
import struct

from minard.constants import MAX_RECORD_SIZE


class CorruptStream(Exception):
    """The byte stream cannot be framed any more: the connection must be dropped.

    `frames`: the complete frames that came before the corruption in the same feed();
    they were received intact and must not be lost with the connection.
    """

    def __init__(self, message, frames=()):
        Exception.__init__(self, message)
        self.frames = list(frames)


class Dialect:
    """The framing and control-message names of one dispatcher flavour."""

    def __init__(self, name, prefix_size, subscribe, always, my_id):
        self.name = name
        self.prefix_size = prefix_size
        self.subscribe = subscribe
        self.always = always
        self.my_id = my_id
        self._pad = b"\x00" * (prefix_size - 12)

    def frame(self, tag, payload=b""):
        """One message: prefix + payload."""
        if isinstance(tag, str):
            tag = tag.encode("ascii")
        if len(tag) > 8:
            raise ValueError("ControlHost tag longer than 8 bytes: %r" % (tag,))
        return tag.ljust(8, b"\x00") + struct.pack(">i", len(payload)) + self._pad + payload

    def client_handshake(self, subscription, client_id):
        """The three control messages a client sends after connecting."""
        return (self.frame(self.subscribe, subscription.encode("ascii"))
                + self.frame(self.always)
                + self.frame(self.my_id, client_id.encode("ascii")))


CASPUR = Dialect("caspur", 12, "Subscrib", "Always", "MyId")
LIGIER = Dialect("ligier", 16, "_Subscri", "_Always", "_MyId")
DIALECTS = {d.name: d for d in (CASPUR, LIGIER)}


def tag_bytes(tag):
    """A tag as it appears on the wire (8 bytes, NUL-padded)."""
    return tag.encode("ascii").ljust(8, b"\x00")


def tag_text(raw):
    return raw.rstrip(b"\x00").decode("ascii", "replace")


class FrameDecoder:
    """Incremental decoder: feed() any split of the stream, get complete frames.

    feed() returns a list of (raw 8-byte tag, payload bytes). A negative size or one above
    `max_size` raises CorruptStream; the decoder is then unusable (drop the connection).
    """

    def __init__(self, dialect=CASPUR, max_size=MAX_RECORD_SIZE):
        self.prefix_size = dialect.prefix_size
        self.max_size = max_size
        self._buffer = b""
        self.corrupt = False

    @property
    def buffered(self):
        return len(self._buffer)

    def feed(self, data):
        if self.corrupt:
            raise CorruptStream("decoder already failed")
        buf = self._buffer + data if self._buffer else bytes(data)
        n = len(buf)
        pos = 0
        prefix = self.prefix_size
        max_size = self.max_size
        unpack = struct.unpack_from
        frames = []
        append = frames.append
        while n - pos >= prefix:
            size = unpack(">i", buf, pos + 8)[0]
            if size < 0 or size > max_size:
                self.corrupt = True
                self._buffer = b""
                raise CorruptStream("frame size %d out of range 0..%d" % (size, max_size),
                                    frames)
            end = pos + prefix + size
            if end > n:
                break
            append((buf[pos:pos + 8], buf[pos + prefix:end]))
            pos = end
        self._buffer = buf[pos:] if pos < n else b""
        return frames
