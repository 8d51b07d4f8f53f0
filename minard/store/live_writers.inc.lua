-- The progress of the slowest live writer of the writers hash KEYS[1] (writer ->
-- 'progress-second redis-time'), and Redis's time: a writer is gone, and removed, when
-- it has not written for `timeout` s of Redis time AND the most advanced writer is more
-- than `lag` s of data ahead of it (a killed worker). Malformed entries are removed.
-- Returns (nil, now) when no live writer is left. (Shared by finalise_claim.lua and
-- clock_sweep.lua: store/scripts.py LIVE_WRITERS, substituted for their placeholder;
-- a fragment, never run by itself.)
local function slowest_live_writer(timeout, lag)
  local now = tonumber(redis.call('TIME')[1])
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
  local minp = nil
  for _, w in ipairs(live) do
    if now - w[3] > timeout and maxp - w[2] > lag then
      redis.call('HDEL', KEYS[1], w[1])
    elseif not minp or w[2] < minp then
      minp = w[2]
    end
  end
  return minp, now
end
