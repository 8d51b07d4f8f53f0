#!lua
-- Channel health (store/health.py): is one bucket of each quantity settled?
-- KEYS: per quantity: finalised key, open zset, writers hash
-- ARGV: member '<H>:<b>', the bucket's last second, writer timeout (s of Redis time)
-- Reply per quantity: {finalised 0/1, open 0/1, live writers whose progress is before
-- the bucket's end}. A bucket that is neither finalised nor open, and that every live
-- writer has flushed past, had no data.
local now = tonumber(redis.call('TIME')[1])
local last, timeout = tonumber(ARGV[2]), tonumber(ARGV[3])
local out = {}
for k = 1, #KEYS, 3 do
  local final = redis.call('EXISTS', KEYS[k])
  local open = redis.call('ZSCORE', KEYS[k + 1], ARGV[1]) and 1 or 0
  local behind = 0
  if final == 0 and open == 0 then
    local entries = redis.call('HGETALL', KEYS[k + 2])
    for i = 1, #entries, 2 do
      local p, stamp = string.match(entries[i + 1], '^(%-?%d+) (%d+)$')
      p, stamp = tonumber(p), tonumber(stamp)
      if p and stamp and now - stamp <= timeout and p < last then
        behind = behind + 1
      end
    end
  end
  out[#out + 1] = {final, open, behind}
end
return out
