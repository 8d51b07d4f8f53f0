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
$live_writers
local minp, now = slowest_live_writer(tonumber(ARGV[2]), tonumber(ARGV[3]))
if not minp then return {} end
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
