#!lua
-- minard.stats: replace a process's counters hash (not update: a restarted process
-- must not show its previous life's counters). KEYS: minard:stats:<process>; ARGV: ttl,
-- then field, value pairs.
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return 1
