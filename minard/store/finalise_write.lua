#!lua
-- Per-channel store: store one finalised bucket and close it.
-- KEYS: final key, open zset, parts hash, claim key
-- ARGV: blob ('' = nothing to store), ttl (s), member, parts version read, claimant
-- A part written since the parts were read (version changed) leaves the bucket open:
-- it is finalised again, from every part, on the next round.
local function release()
  if redis.call('GET', KEYS[4]) == ARGV[5] then redis.call('DEL', KEYS[4]) end
end
local v = redis.call('HGET', KEYS[3], '~v')
if (v or '') ~= ARGV[4] then
  release()
  return 0
end
if ARGV[1] ~= '' then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
end
redis.call('ZREM', KEYS[2], ARGV[3])
release()
return 1
