#!lua
-- Log server (store/logserver.py): a DAQ program's heartbeat (SPEC §4, §5.2).
-- KEYS: heartbeat, uptime[, post id]; ARGV: status, expire, now[, post id ttl].
-- uptime keeps the time the heartbeat (re)appeared: set only when missing, TTL refreshed.
-- With a post id (a retried post carries the same one): the first post claims it with
-- SET NX and is applied; a repeat is not applied again (returns 0), so a late retry can
-- never overwrite a newer status.
if KEYS[3] and not redis.call('SET', KEYS[3], '1', 'EX', ARGV[4], 'NX') then
  return 0
end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
if not redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[2], 'NX') then
  redis.call('EXPIRE', KEYS[2], ARGV[2])
end
return 1
