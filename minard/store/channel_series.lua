#!lua flags=no-writes
-- Per-channel store, read-only: the same byte range of many finalised buckets.
-- KEYS: finalised keys (one per point); ARGV[1]: offset, ARGV[2]: length (bytes)
-- Reply: one string per key ('' where the bucket was not finalised).
local first = tonumber(ARGV[1])
local last = first + tonumber(ARGV[2]) - 1
local out = {}
for i = 1, #KEYS do
  out[i] = redis.call('GETRANGE', KEYS[i], first, last)
end
return out
