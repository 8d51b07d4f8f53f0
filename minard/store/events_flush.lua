#!lua
-- One chunk of one second of aggregated events from one pull worker (store/events.py,
-- SPEC §4). ARGV[1]: the JSON flush payload (aggregate/events.py); ARGV[2]: the chunk,
-- JSON {"k": chunk number, "i": [intervals], "h": [[hash interval, first, last], ...]
-- (the pairs first..last of the nhit histogram p.hist, 1-based, for that interval's
-- nhit:hist), "s": 1 if the nhit samples are in this chunk}. A second is written in chunks so that
-- no script holds Redis long (each chunk is atomic); each chunk is applied once per
-- flush id (a retried flush whose reply was lost counts nothing twice).
-- Constants from minard.constants: TTLs and sizes.
local p = cjson.decode(ARGV[1])
local chunk = cjson.decode(ARGV[2])
local function int(v) return string.format('%d', v) end
if p.id then
  local marker = 'minard:flush:' .. p.id .. ':' .. int(chunk.k)
  if not redis.call('SET', marker, '1', 'NX', 'EX', $mark_ttl) then
    return 0
  end
end
local t = p.t
local events = p.events
for _, I in ipairs(chunk.i) do
  local prefix = 'ts:' .. I .. ':' .. math.floor(t / I) .. ':'
  local ttl = I * $expire
  if events > 0 then
    local trig = prefix .. 'trig'
    local nhit = trig .. ':nhit'
    local charge = trig .. ':charge'
    for f, v in pairs(p.trig) do redis.call('HINCRBY', trig, f, int(v)) end
    for f, v in pairs(p.nhit) do redis.call('HINCRBY', nhit, f, int(v)) end
    for f, v in pairs(p.charge) do redis.call('HINCRBY', charge, f, int(v)) end
    -- the last event's run/subrun/gtid: the latest receipt time wins, whichever worker
    -- flushes last (kept outside the ts: namespace that other programs scan)
    local order_key = 'minard:last:' .. I .. ':' .. math.floor(t / I)
    local previous = redis.call('GET', order_key)
    if (not previous) or tonumber(previous) <= p.order then
      redis.call('SET', order_key, int(p.order), 'EX', ttl)
      redis.call('HSET', trig, 'run', int(p.last[1]), 'subrun', int(p.last[2]),
                 'gtid', int(p.last[3]))
    end
    redis.call('EXPIRE', trig, ttl)
    redis.call('EXPIRE', nhit, ttl)
    redis.call('EXPIRE', charge, ttl)
  end
  redis.call('SET', prefix .. 'heartbeat', '1', 'EX', ttl)
end
if events > 0 then
  for _, part in ipairs(chunk.h) do
    local H, first, last = part[1], part[2], part[3]
    local hist = 'ts:' .. H .. ':' .. math.floor(t / H) .. ':nhit:hist'
    local h = p.hist
    for i = first, last, 2 do
      redis.call('HINCRBY', hist, int(h[i]), int(h[i + 1]))
    end
    redis.call('EXPIRE', hist, H * $hash_expire)
  end
  local samples = p.samples
  if chunk.s == 1 and #samples > 0 then
    local key = 'ts:1:' .. t .. ':nhit'
    local values = {}
    for i = 1, #samples do values[i] = int(samples[i]) end
    redis.call('LPUSH', key, unpack(values))
    redis.call('LTRIM', key, 0, $n_samples - 1)
    redis.call('EXPIRE', key, $samples_ttl)
  end
end
return 1
