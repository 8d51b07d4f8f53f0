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
CMOS_STATE_TTL = 3600  # s: previous count/time per channel (cmos:state:<crate>)
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

#: Main web site (SPEC §5.1, §6).
WEB_PORT = 8080
MAX_POINTS = 10000  # a time-series request may ask for at most this many points
MAX_EXPRESSIONS = 64  # comma-separated expressions in one /metric request
STREAM_INTERVAL = 1.0  # s between /stream messages (one snapshot, sent to every client)
STREAM_MAX_CLIENTS = 2000  # more /stream clients at once -> 503
STREAM_DROP_AFTER = 30.0  # s a /stream client may stay unable to take data before it is dropped
STREAM_SNDBUF = 64 * 1024  # bytes of kernel send buffer per /stream client (bounds memory)
STALE_AFTER = 10  # s without events or pull-worker heartbeat before pages show "stale"
STALE_LOOKBACK = 60  # s of 1-s buckets /stream looks back to find the last events/heartbeat
NHIT_HIST_INTERVAL = 5  # s: the hash interval the NHit page sums for the last 10 s / 60 s
NHIT_HIST_MAX_SECONDS = 3600
TAIL_LINES = 100  # /tail without seek answers the last this many lines
TAIL_MAX_BYTES = 1024 * 1024  # /tail answers at most this much of a log at once
ALARMS_PER_ANSWER = 1000  # /get_alarm answers at most this many alarms at once
ALARMS_DEFAULT_BACK = 100  # /get_alarm without start answers the last this many
L2_STATES = ("process", "wait", "rat", "done", "fail")
L2_MAX_FILES = 1000  # /get_l2 answers the newest this many members of l2:<state>
#: Time ranges of the pages' range control: (URL value, label, seconds).
TIME_RANGES = (
    ("15m", "15 min", 900), ("1h", "1 hour", 3600), ("3h", "3 hours", 10800),
    ("9h", "9 hours", 32400), ("1d", "1 day", 86400), ("3d", "3 days", 259200),
    ("1w", "1 week", 604800), ("1mo", "1 month", 2592000), ("3mo", "3 months", 7776000),
    ("1y", "1 year", 31536000), ("10y", "10 years", 315360000),
)

#: The simulator's --rate at most (events/s): a synthetic second is built in memory at
#: once, so a mistyped 1e9 would exhaust the machine instead of simulating anything.
SIMULATOR_MAX_RATE = 1_000_000

#: Deployment (etc/, minard.deploy, scripts/run-local): the ports around the roles.
NGINX_PORT = 50000  # nginx in front of the web site (under /monitoring/) and the log server
REDIS_PORT = 6379
SUPERVISOR_PORT = 9001  # supervisord's inet server (127.0.0.1 only, with a password)
#: Seconds supervisord gives a process between TERM and KILL (pull workers flush on TERM).
STOP_WAIT_SECONDS = 20
