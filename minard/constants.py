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

#: The crates installed in SNO+: 0-18. Crate 19 exists in the channel numbering (and in
#: the per-channel arrays) but not in the detector: the pages draw it "not installed".
INSTALLED_CRATES = tuple(range(19))
#: (crate, card) of the trigger-sum card FEC/D: its channels carry trigger sums, not PMTs
#: (SPEC §3); channel health never judges them.
TRIGGER_SUM_CARD = (17, 15)

# -- what later SNO+ monitoring derived from the event stream (issue 13; SPEC §2.3a, §3) --
#: The FEC/D's channels counted per second in `trig:fecd`: (field, channel).
FECD_CHANNELS = (("N16", 4), ("20LB", 17), ("20", 19), ("100L", 28), ("100M", 29),
                 ("100H", 31))
#: MTC word 5 bit 29 (Unused1) marks front-end polling.
POLLING_BIT = 29
#: Event types beyond the 27 trigger bits, as fields of trig / trig:nhit / trig:charge
#: and of the per-type data: polling events, and events with trigger word 0 and a gtid.
POLLING = "polling"
NO_TRIGGER = "NONE"
#: Every event type: the trigger names (bits 0-26), then polling (27) and NONE (28).
EVENT_TYPES = TRIGGERS + (POLLING, NO_TRIGGER)
#: MTC clocks: 10 MHz count of 53 bits (100 ns ticks), 50 MHz count of 43 bits (20 ns).
CLOCK10_BITS, CLOCK10_NS = 53, 100
CLOCK50_BITS, CLOCK50_NS = 43, 20
GTID_BITS = 24
#: Clock jumps (aggregate/clockjumps.py): the clocks may disagree by this many ns plus
#: this many ppm of the time between the events ([clock-jumps] of the pull workers' INI).
CLOCK_JUMP_TOLERANCE_NS = 1000
CLOCK_JUMP_TOLERANCE_PPM = 100
#: Events further apart than this in receipt time are not compared (s: the stream paused).
CLOCK_PAIR_WINDOW = 60
#: A jump within this many seconds of the previous one belongs to the same burst: one
#: alarm per burst.
CLOCK_JUMP_BURST = 60
#: Jumps kept in the list (newest first), and listed per worker and second at most (all
#: of them are counted in the per-second series).
CLOCK_JUMPS_KEPT = 1000
CLOCK_JUMP_DETAILS = 20
#: Loose ends (a batch's first and last event) are paired this many seconds after every
#: pull worker has passed them (a batch is accepted at most LATE_LIMIT = 10 s late), and
#: one still unpaired after CLOCK_END_MAX_AGE s (the stream stopped after it) is dropped.
CLOCK_END_SETTLE = 11
CLOCK_END_MAX_AGE = 600
#: Run history: a run's record and its seconds are kept this long (s).
RUN_KEEP = 2 * 366 * 86400
#: Run records written per worker and second at most: a stream whose run number changes
#: with nearly every event is corrupt; the events of further runs are counted, not filed.
RUNS_PER_SECOND = 16
#: Per-run occupancy by trigger type: a worker follows this many runs at once (a new run
#: takes the place of one not seen for RUN_IDLE s), writes its partials every
#: RUN_OCCUPANCY_WRITE s, and Redis keeps them RUN_OCCUPANCY_KEEP s.
RUNS_FOLLOWED = 3
RUN_IDLE = 5
RUN_OCCUPANCY_WRITE = 10
RUN_OCCUPANCY_KEEP = 7 * 86400
#: SNO+ run type word (RHDR RunMask, the run-type bits of the SNO+ DAQ): bit -> name.
RUN_TYPE_BITS = {0: "Maintenance", 1: "Transition", 2: "Physics", 3: "Deployed Source",
                 4: "External Source", 5: "ECA", 6: "Diagnostic", 7: "Experimental",
                 8: "Supernova", 11: "TELLIE", 12: "SMELLIE", 13: "AMELLIE", 14: "PCA",
                 15: "ECA Pedestal", 16: "ECA Time Slope"}
#: nhit histograms per event type (minard's own, beside the compat all-events one):
#: hash buckets kept H × NHIT_TYPE_EXPIRE[H] s (the 1-day ones 400 days, not 1200: one per
#: type and day).
NHIT_TYPE_EXPIRE = {5: 1200, 60: 1200, 86400: 400}
#: /query?name=nhit_hist over a window: hash buckets summed at most.
NHIT_RANGE_BUCKETS = 400


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
#: Dispatcher link (--idle-timeout of dispatch-push): no RAWDATA/RECHDR record for this
#: long and the link is dropped and made again. A healthy dispatcher is quiet while the
#: detector is stopped, so this is a probe, not a verdict: it then costs one reconnection
#: a minute; a hung dispatcher or a stalled relay is noticed within it. (A dead host or a
#: cut cable is noticed sooner, by TCP keepalive.)
DISPATCHER_IDLE_TIMEOUT = 60.0
#: Frames (dispatcher) or records (data server) in a row that carry no wanted record
#: before the stream counts as corrupt and is dropped. A live link carries at most a few
#: in a row (a Born/Died notice, a record nobody subscribed to); zeros or junk carry
#: hundreds of thousands a second.
MAX_USELESS_FRAMES = 10000
#: TCP keepalive on the dispatcher and data-server sockets: first probe after this many
#: idle seconds, then one every KEEPALIVE_INTERVAL, the link declared dead after
#: KEEPALIVE_COUNT unanswered ones (a powered-off host or a cut cable: <= 25 s).
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3

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
#: Logging server against hostile clients (issue 12). A whole request (headers and body)
#: must arrive within REQUEST_DEADLINE s of the connection's start (or of the previous
#: answer on a kept-alive connection), however the bytes trickle in.
REQUEST_DEADLINE = 10.0
#: Connections at once: at most this many, and never more than the process's
#: file-descriptor limit minus LOG_SERVER_FD_RESERVE: Redis, log files, the auth file,
#: lingering refusals (LINGERING_REFUSALS), and the refused connections of one accept
#: pass, which live until the next turn of the reactor (at most the listen queue,
#: Twisted's default 50: keep it so; a longer queue lets a connection flood open more
#: descriptors in one pass than the reserve holds).
LOG_SERVER_MAX_CONNECTIONS = 2000
LOG_SERVER_FD_RESERVE = 100
#: Connections of one remote address that have not (yet) authenticated.
CONNECTIONS_PER_ADDRESS = 32
#: Fractions of the connections kept for loopback (nginx, local programs) and for
#: addresses that logged in within TRUSTED_ADDRESS_SECONDS: strangers never get them.
CONNECTIONS_RESERVED_LOCAL = 1 / 8
CONNECTIONS_RESERVED_TRUSTED = 1 / 4
TRUSTED_ADDRESS_SECONDS = 3600
#: A refused or answered-and-closing connection is read (and ignored) this long so that
#: the client sees the answer instead of a reset; at most LINGERING_REFUSALS refusals.
LINGER_SECONDS = 2.0
LINGERING_REFUSALS = 32
#: Slow password checks of one client at once (more wait their turn, so that one client's
#: flood does not queue ahead of everyone else in the thread pool).
AUTH_CHECKS_PER_CLIENT = 2
#: Post ids (form field `id`): a retried post with the same id is stored once. Remembered
#: in Redis this long, and the last POST_IDS_REMEMBERED log-line ids in memory too.
POST_ID_TTL = 3600
#: A heartbeat is retried within minutes (minard-log --heartbeat: its --retries, ~11 s
#: each at most), and every beat of a program is a new post: its id needs less time.
HEARTBEAT_POST_ID_TTL = 300
POST_IDS_REMEMBERED = 20000
POST_ID_MAX_LENGTH = 64
#: How long the log server waits for Redis to claim a log line's post id before writing
#: the line anyway (the file must not wait for a stalled Redis).
POST_CLAIM_TIMEOUT = 2.0
#: Client library (minard.monitor): heartbeat period, retry backoff, forwarded-log queue.
HEARTBEAT_INTERVAL = 5.0
MONITOR_MAX_BACKOFF = 30.0
MONITOR_TIMEOUT = 10.0
MONITOR_QUEUE = 1000
#: The client library drops an idle kept-alive connection after this many seconds, before
#: the server's REQUEST_DEADLINE would close it under a request being sent.
MONITOR_IDLE_CONNECTION = 8.0
#: Stale-data watchdog in the log-server ([watchdog] enabled, after-seconds).
WATCHDOG_AFTER = 60
WATCHDOG_INTERVAL = 1.0
#: Level of a "cleared" alarm (SUCCESS): the watchdog's conditions and programs.
ALARM_CLEARED_LEVEL = 21
#: Program alarms (watchdog): a program of programs.ini whose heartbeat key is gone (it
#: was silent for its expire) raises one alarm once the key has stayed gone this long (s;
#: a program posting exactly every expire seconds flickers, it is not down) ...
PROGRAM_ALARM_CONFIRM = 5
#: ... and after the log server starts (or gets Redis back), a program has its expire or
#: this long, whichever is longer, to post: clients that retried with backoff while the
#: server was away (MONITOR_MAX_BACKOFF + MONITOR_TIMEOUT) are back by then.
PROGRAM_ALARM_START_GRACE = 45
#: Alarm acknowledgements (main site, POST ack_alarm): the acknowledger's name, the ids
#: of one request, the body.
ACK_NAME_MAX = 64
ACK_MAX_IDS = 1000
ACK_BODY_MAX = 16 * 1024
#: Forwarded log records (minard.monitor.LogForwarder): at most this many at once, then
#: this many a second; the rest are counted and reported in one WARNING record.
MONITOR_FORWARD_BURST = 20
MONITOR_FORWARD_RATE = 10 / 60.0
#: The log server's own records go to its own log file, not over HTTP: a larger budget
#: (a dead DAQ gives one watchdog line per program at once).
OWN_LOG_BURST = 200
OWN_LOG_RATE = 2.0

#: A web process reading from a Redis replica (--redis-replica) says so on every page
#: when the replica is this many seconds behind its primary, or cannot be read.
REPLICA_LAG_WARN = 5.0

#: The web site and log server give Redis this long to answer (s), then answer 503: their
#: reads are short scripts (milliseconds), and a retried heartbeat or /log is idempotent.
SITE_REPLY_TIMEOUT = 3.0

#: Main web site (SPEC §5.1, §6).
WEB_PORT = 8080
MAX_POINTS = 10000  # a time-series request may ask for at most this many points
MAX_EXPRESSIONS = 64  # comma-separated expressions in one /metric request
#: /metric cost: expressions x points at most (each value is at most 2 Redis reads, so a
#: request is at most ~200 script calls of READ_CHUNK reads, read METRIC_CALLS_IN_FLIGHT
#: at a time). The Stream page asks 36 x 900 = 32,400.
MAX_METRIC_VALUES = 100000
METRIC_CALLS_IN_FLIGHT = 2  # script calls of one /metric request in Redis's queue at most
#: Requests whose cost grows with their parameters (/metric, /metric_hash, /owl_tubes,
#: channel and nhit /query): this many run at once, the others wait their turn; cheap
#: requests (/get_status, /metrics, pages, /stream) never wait behind them.
EXPENSIVE_RUNNING = 2
EXPENSIVE_WAITING = 256  # running + waiting at most (beyond -> 503) ...
EXPENSIVE_PER_ADDRESS = 32  # ... and from one client address (beyond -> 429)
EXPENSIVE_LOOPBACK_RESERVE = 64  # of EXPENSIVE_WAITING, kept for loopback clients
NHIT_SAMPLES_PER_CALL = 100  # s of sampled nhit lists /query?name=nhit reads at a time
#: Connections to the web port: at most this many open (below supervisord's minfds 4096,
#: leaving room for Redis, log files) ...
WEB_MAX_CONNECTIONS = 3000
WEB_CONNECTIONS_PER_ADDRESS = 64  # ... and from one non-loopback peer address
#: ... of which this many are kept for loopback peers: nginx in front, local tools, ssh
#: tunnels (a client behind nginx is known by the X-Real-IP nginx sets, for /stream and
#: the expensive requests; loopback clients are not capped per address).
WEB_LOOPBACK_RESERVE = 500
STREAM_INTERVAL = 1.0  # s between /stream messages (one snapshot, sent to every client)
STREAM_MAX_CLIENTS = 2000  # more /stream clients at once -> 503
STREAM_PER_ADDRESS = 32  # /stream clients from one non-loopback address (beyond -> 429)
STREAM_LOOPBACK_RESERVE = 200  # of STREAM_MAX_CLIENTS, kept for loopback clients
#: A /stream client that cannot keep up is dropped (web/stream.py): when the bytes sent to
#: it that it has not taken yet (our buffers and the kernel's send queue) exceed
#: STREAM_MAX_UNSENT, or when it has been behind for STREAM_DROP_AFTER s: something left
#: on our side, or more than STREAM_UNREAD_SLACK (or two messages) unread in its own
#: kernel (a client that reads shows about one message and the kernel's rounding).
STREAM_MAX_UNSENT = 64 * 1024
STREAM_DROP_AFTER = 5.0
STREAM_UNREAD_SLACK = 16 * 1024
STREAM_SNDBUF = 64 * 1024  # bytes of kernel send buffer per /stream client (bounds memory)
STALE_AFTER = 10  # s without events or pull-worker heartbeat before pages show "stale"
STALE_LOOKBACK = 60  # s of 1-s buckets /stream looks back to find the last events/heartbeat
#: dispatch-push marks each second its dispatcher link is up (keys.link_up): it looks
#: this often (s; under a second, so no second is skipped), and holds at most this many
#: unwritten seconds while Redis is away (the oldest are dropped, counted).
LINK_MARK_PERIOD = 0.5
LINK_MARK_PENDING = 900
#: DAQ page: default LO/HI colour thresholds, relative to the median over the channels of
#: the crate map shown (so a normal detector is "normal" whatever its running conditions).
#: CMOS rate (Hz) and occupancy (hits per event): LO = median × lo, HI = median × hi.
#: Base current (ADC counts, raw − 127: centred on 0, so a ratio means nothing): LO =
#: median − band, HI = median + band.
DAQ_THRESHOLDS = {
    "cmos": {"unit": "Hz", "lo": 0.1, "hi": 5.0},
    "occupancy": {"unit": "hits/event", "lo": 0.1, "hi": 5.0},
    "base": {"unit": "ADC counts", "band": 8.0},
}
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
#: multi-host layout: nginx on the web host takes other hosts' heartbeats and logs over
#: HTTPS on this port (minard/deploy/multihost.py)
NGINX_TLS_PORT = 50443
REDIS_PORT = 6379
SUPERVISOR_PORT = 9001  # supervisord's inet server (127.0.0.1 only, with a password)
#: Seconds supervisord gives a process between TERM and KILL (pull workers flush on TERM).
STOP_WAIT_SECONDS = 20
