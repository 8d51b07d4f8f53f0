-- Log server (store/logserver.py): a DAQ program's heartbeat (SPEC §4, §5.2).
-- KEYS: heartbeat, uptime; ARGV: status, expire, now. uptime keeps the time the
-- heartbeat (re)appeared: set only when missing, TTL refreshed.
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if not redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2], 'NX') then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
