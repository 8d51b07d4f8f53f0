"""Numbers that mean something, each in one place (SPEC.md §1-4)."""

#: Trigger word bit i is TRIGGERS[i] (SPEC §2.3).
TRIGGERS = (
    "100L", "100M", "100H", "20", "20LB", "ESUML", "ESUMH", "OWLN", "OWLEL",
    "OWLEH", "PULGT", "PRESCL", "PED", "PONG", "SYNC", "EXTA", "EXT2", "EXT3",
    "EXT4", "EXT5", "EXT6", "EXT7", "EXT8", "SRAW", "NCD", "SOFGT", "MISS",
)
TRIGGER_BIT = {name: bit for bit, name in enumerate(TRIGGERS)}
N_TRIGGER_BITS = len(TRIGGERS)  # 27

#: Time-series bucket intervals (s) and how many buckets each keeps.
INTERVALS = tuple(2 ** i for i in range(17))  # 1 .. 65536
EXPIRE = 2400
#: Per-channel hash intervals (s) and how many finalised buckets each keeps.
HASH_INTERVALS = (5, 60, 86400)
HASH_EXPIRE = 1200
#: Seconds after a hash bucket ends before it is finalised (every worker has flushed).
FINALISE_DELAY = 3
#: nhit samples kept per second (compat list ts:1:<sec>:nhit) and their TTL.
NHIT_SAMPLES = 100
NHIT_SAMPLES_TTL = 3600

#: Detector geometry.
N_CRATES = 20
N_CARDS = 16
N_CHANNELS_PER_CARD = 32
N_CHANNELS = N_CRATES * N_CARDS * N_CHANNELS_PER_CARD  # 10240
#: The 48 OWL tubes: crates 3, 13, 18; card 15; channels 16-31.
OWL_CHANNELS = tuple(
    crate << 9 | 15 << 5 | ch for crate in (3, 13, 18) for ch in range(16, 32)
)


def channel_index(crate, card, channel):
    """The channel index used everywhere: crate << 9 | card << 5 | channel."""
    return crate << 9 | card << 5 | channel


#: Wire limits.
MAX_RECORD_SIZE = 130000

#: Record IDs (four ASCII characters read big-endian).
RECORD_PMT = 0x504D5420
RECORD_RHDR = 0x52484452
RECORD_TRIG = 0x54524947
RECORD_EPED = 0x45504544
RECORD_CMOS = 0x434D4F53
RECORD_BASE = 0x42415345
RECORD_SCMD = 0x53436D64
RECORD_SRSP = 0x53527370

#: Default ports and endpoints.
DISPATCHER_PORT = 5553
DATA_SERVER_PORT = 4000
EVENTS_ZMQ = "tcp://127.0.0.1:5560"
CMOS_ZMQ = "tcp://127.0.0.1:5557"
BASE_ZMQ = "tcp://127.0.0.1:5558"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"

#: Logging levels of the DAQ log server (SPEC §5.2).
LEVELS = {10: "DEBUG", 20: "INFO", 21: "SUCCESS", 30: "WARNING", 40: "DANGER"}
ALARM_LEVEL = 40
ALARM_TTL = 86400

#: Data stream (SPEC §2.4, §3): payload sizes, CMOS count rules, base-current offset.
CMOS_PAYLOAD_SIZE = 1164
BASE_PAYLOAD_SIZE = 1100
CMOS_COUNT_SLOTS = 8  # a CMOS record carries counts for at most the first 8 set slots
CMOS_INVALID_BIT = 1 << 31
CMOS_MAX_DT = 10  # s: a rate needs 0 < dt < 10 s
CMOS_STATE_TTL = 3600  # s: previous count/time per channel (cmos:count:<crate>, ...)
BASE_CURRENT_OFFSET = 127
#: Raw per-bucket sums (`ts:H:b:<name>:sum/len`, `occupancy:hits/count`) live H + this.
RAW_HASH_TTL_EXTRA = 300
#: Data-server client: wait this long for the SRsp, and drop a server silent this long.
SUBSCRIBE_TIMEOUT = 10.0
DATA_SERVER_SILENCE = 30.0

#: Logging server (SPEC §5.2): rotating log files, size limits, per-client rate limits.
LOG_SERVER_PORT = 8081
LOG_FILE_MAX_BYTES = 5 * 1024 * 1024
LOG_FILE_BACKUPS = 10
MAX_MESSAGE_BYTES = 64 * 1024  # a longer message (UTF-8) -> 413
MAX_BODY_BYTES = 4 * MAX_MESSAGE_BYTES  # room for form encoding; longer bodies -> 413 unread
REQUEST_RATE = 50.0  # requests/s refilled per client ...
REQUEST_BURST = 200  # ... up to this many at once; beyond -> 429
AUTH_FAILURE_RATE = 1.0  # failed logins/s refilled per client ...
AUTH_FAILURE_BURST = 10  # ... beyond -> 429 (each failure costs a slow hash)
#: Client library (minard.monitor): heartbeat period, retry backoff, forwarded-log queue.
HEARTBEAT_INTERVAL = 5.0
MONITOR_MAX_BACKOFF = 30.0
MONITOR_TIMEOUT = 10.0
MONITOR_QUEUE = 1000
#: Stale-data watchdog in the log-server ([watchdog] enabled, after-seconds).
WATCHDOG_AFTER = 60
WATCHDOG_INTERVAL = 1.0
