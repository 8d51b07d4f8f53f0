#!lua
-- Per-channel store: claim the buckets that every live writer has flushed past.
-- KEYS[1]: writers hash (writer -> 'progress redis-time'), KEYS[2]: open zset
-- ARGV: claimant, writer timeout (s), writer lag (s), most buckets, claim (ms),
--       claim key prefix, parts key prefix
-- A writer is gone when it has not written for `timeout` seconds of Redis time AND
-- the most advanced writer is more than `lag` seconds of data ahead of it (a killed
-- worker): it is removed. A stalled Redis ages every stamp at once, and the first writer
-- to write again may be far ahead of the others: the finaliser then passes a timeout
-- longer than any stall for a while (Finaliser.claim_timeout), so nobody is dropped.
-- Reply: flat list member, parts (flat HGETALL) for each bucket claimed here.
local now = tonumber(redis.call('TIME')[1])
local timeout, lag = tonumber(ARGV[2]), tonumber(ARGV[3])
local entries = redis.call('HGETALL', KEYS[1])
local live, maxp = {}, nil
for i = 1, #entries, 2 do
  local p, stamp = string.match(entries[i + 1], '^(%-?%d+) (%d+)$')
  p, stamp = tonumber(p), tonumber(stamp)
  if p and stamp then
    live[#live + 1] = {entries[i], p, stamp}
    if not maxp or p > maxp then maxp = p end
  else
    redis.call('HDEL', KEYS[1], entries[i])
  end
end
if not maxp then return {} end
local minp = nil
for _, w in ipairs(live) do
  if now - w[3] > timeout and maxp - w[2] > lag then
    redis.call('HDEL', KEYS[1], w[1])
  elseif not minp or w[2] < minp then
    minp = w[2]
  end
end
local members = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', minp, 'LIMIT', 0, 256)
local out, claimed = {}, 0
for _, m in ipairs(members) do
  if claimed >= tonumber(ARGV[4]) then break end
  if redis.call('SET', ARGV[6] .. m, ARGV[1], 'NX', 'PX', ARGV[5]) then
    out[#out + 1] = m
    out[#out + 1] = redis.call('HGETALL', ARGV[7] .. m)
    claimed = claimed + 1
  end
end
return out
