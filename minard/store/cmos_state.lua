#!lua
-- CMOS previous-count state (store/datastream.py): one batch of CMOS records.
-- KEYS: the state hash of each record's crate
-- ARGV: state ttl, then per record: receipt seconds, nanoseconds, slots blob
--   (per slot: slot u8, all-valid u8, 32 counts u32, 32 valid flags u8)
-- returns per record the concatenated states its slots had before it (zeros if none)
local ttl = tonumber(ARGV[1])
local size = $state_size
local insize = $input_size
local zero = string.rep('\0', size)
local full_fmt = '>' .. string.rep('I4', 98)
local in_fmt = '>' .. string.rep('I4', 32) .. string.rep('B', 32)

local out = {}
for r = 1, #KEYS do
  local key = KEYS[r]
  local sec, nsec = tonumber(ARGV[3 * r - 1]), tonumber(ARGV[3 * r])
  local stamp = struct.pack('>I4I4', sec, nsec)
  local blob = ARGV[3 * r + 1]
  local nslots = #blob / insize
  local olds = {}
  if nslots > 0 then
    local fields = {}
    for j = 1, nslots do
      fields[j] = tostring(string.byte(blob, (j - 1) * insize + 1))
    end
    local stored = redis.call('HMGET', key, unpack(fields))
    local updates = {}
    for j = 1, nslots do
      local base = (j - 1) * insize
      local old = stored[j]
      if not old or #old ~= size then old = zero end
      local ms, mn = struct.unpack('>I4I4', old)
      local fresh = sec > ms or (sec == ms and nsec > mn)
      local new
      if fresh and string.byte(blob, base + 2) == 1 then
        -- every count valid and newer than anything stored: all 32 pairs are replaced
        new = stamp .. string.sub(blob, base + 3, base + 130) .. string.rep(stamp, 32)
      else
        local o = {struct.unpack(full_fmt, old)}
        local inp = {struct.unpack(in_fmt, blob, base + 3)}
        if fresh then o[1], o[2] = sec, nsec end
        for c = 1, 32 do
          -- channel c: count at o[2 + c], time at o[33 + 2c], o[34 + 2c]
          local ps, pn = o[33 + 2 * c], o[34 + 2 * c]
          if inp[32 + c] == 1 and (sec > ps or (sec == ps and nsec > pn)) then
            o[2 + c] = inp[c]
            o[33 + 2 * c], o[34 + 2 * c] = sec, nsec
          end
        end
        o[99] = nil  -- the position struct.unpack appends
        new = struct.pack(full_fmt, unpack(o))
      end
      olds[j] = old
      updates[2 * j - 1] = fields[j]
      updates[2 * j] = new
    end
    redis.call('HSET', key, unpack(updates))
    redis.call('EXPIRE', key, ttl)
  end
  out[r] = table.concat(olds)
end
return out
