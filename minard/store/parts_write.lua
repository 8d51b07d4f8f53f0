#!lua
-- Per-channel store: a worker's running partials and its progress (store/channels.py).
-- KEYS: per name: writers hash, open zset; then one parts hash per part of that name
-- ARGV[1]: writer id; ARGV[2]: number of names; then per name:
--   progress ('' = unchanged), number of parts, then per part:
--   field, blob, ttl (s), member '<H>:<b>', score (the bucket's last second)
-- A part overwrites the field that holds this worker's partial (idempotent: a retry
-- writes the same or a newer partial), bumps the hash's version '~v' (a finaliser that
-- read an older version does not remove the bucket from the open set) and (re)opens the
-- bucket. Progress is stamped with Redis's own clock (no host clock is trusted).
local now = redis.call('TIME')[1]
local writer = ARGV[1]
local a, k = 3, 1
for n = 1, tonumber(ARGV[2]) do
  local writers, open = KEYS[k], KEYS[k + 1]
  k = k + 2
  local progress, nparts = ARGV[a], tonumber(ARGV[a + 1])
  a = a + 2
  for p = 1, nparts do
    local key = KEYS[k]
    k = k + 1
    redis.call('HSET', key, ARGV[a], ARGV[a + 1])
    redis.call('HINCRBY', key, '~v', 1)
    redis.call('EXPIRE', key, ARGV[a + 2])
    redis.call('ZADD', open, ARGV[a + 4], ARGV[a + 3])
    a = a + 5
  end
  if progress ~= '' then
    redis.call('HSET', writers, writer, progress .. ' ' .. now)
  end
end
return 1
