#!lua
-- Clock jumps across batches (store/analyses.py, aggregate/clockjumps.py): pair the loose
-- ends (each batch's first event "H" and last event "T") in the push's order once every
-- pull worker has passed them, and judge each pair. Atomic: whichever worker runs it,
-- every pair is judged once.
-- KEYS: [1] writers hash (writer -> 'progress-second redis-time'), [2] ends zset (score:
--       receipt time in µs; member 'stamp|H or T|gtid|c10|c50|run|writer'), [3] jump list,
--       [4] burst key
-- ARGV: [1] writer timeout (s), [2] writer lag (s), [3] settle (s), [4] max age of an
--       unpaired tail (s), [5] tolerance ns, [6] tolerance ppm, [7] pair window (µs),
--       [8] ends to look at, at most, [9] details to list, at most, [10] list length kept,
--       [11] burst (s), [12] JSON list of intervals, [13] counter TTL factor (I × it)
-- Reply: {jumps, 1 if a burst started, JSON of the first jump or ''}.
-- The judgement is aggregate/clockjumps.pair_kind's: a gtid that does not advance by
-- one, a clock going back (the upper half of its modulus), or clocks disagreeing by
-- more than tolerance ns + ppm of the elapsed 10 MHz time.
$live_writers
local minp, now = slowest_live_writer(tonumber(ARGV[1]), tonumber(ARGV[2]))
if not minp then return {0, 0, ''} end
local final = (minp - tonumber(ARGV[3]) + 1) * 1000000 - 1
local ends = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', final, 'LIMIT', 0, tonumber(ARGV[8]))

local TWO53, TWO52 = 9007199254740992, 4503599627370496
local TWO43, TWO42 = 8796093022208, 4398046511104
local TWO24 = 16777216
local tol_ns, tol_ppm = tonumber(ARGV[5]), tonumber(ARGV[6])
local window = tonumber(ARGV[7])
local function parse(m)
  local stamp, kind, g, c10, c50, run = string.match(
    m, '^(%d+)|([HT])|(%d+)|(%d+)|(%d+)|(%d+)|')
  return {m = m, stamp = tonumber(stamp), kind = kind, g = tonumber(g), c10 = tonumber(c10),
          c50 = tonumber(c50), run = run}
end
local function modulo(x, m)
  x = x % m
  if x < 0 then x = x + m end
  return x
end
local function judge(a, b)
  local d10 = modulo(b.c10 - a.c10, TWO53)
  local d50 = modulo(b.c50 - a.c50, TWO43)
  local kind = nil
  if modulo(b.g - a.g, TWO24) ~= 1 then
    kind = 'gtid'
  elseif d10 >= TWO52 then
    kind = '10MHz backwards'
  elseif d50 >= TWO42 then
    kind = '50MHz backwards'
  elseif math.abs(100 * d10 - 20 * d50) > tol_ns + tol_ppm * 1e-6 * 100 * d10 then
    kind = 'clocks disagree'
  end
  if d10 >= TWO52 then d10 = d10 - TWO53 end
  if d50 >= TWO42 then d50 = d50 - TWO43 end
  return kind, d10, d50
end

local intervals = cjson.decode(ARGV[12])
local ttl_factor = tonumber(ARGV[13])
local jumps, burst, first, listed = 0, 0, '', 0
local function record(a, b, kind, d10, d50)
  jumps = jumps + 1
  local second = math.floor(b.stamp / 1000000)
  for _, I in ipairs(intervals) do
    local key = 'ts:' .. I .. ':' .. math.floor(second / I) .. ':CLOCK_JUMPS'
    redis.call('INCRBY', key, 1)
    redis.call('EXPIRE', key, I * ttl_factor)
  end
  local detail = cjson.encode({time = b.stamp / 1000000, gtid = b.g, previous_gtid = a.g,
                               d10 = d10, d50 = d50, kind = kind, run = tonumber(b.run),
                               across = 1})
  if listed < tonumber(ARGV[9]) then
    redis.call('LPUSH', KEYS[3], detail)
    listed = listed + 1
  end
  if first == '' then first = detail end
  if redis.call('SET', KEYS[4], '1', 'NX', 'EX', ARGV[11]) then
    burst = 1
  else
    redis.call('EXPIRE', KEYS[4], ARGV[11])
  end
end

local i, n = 1, #ends
local done = {}
while i <= n do
  local a = parse(ends[i])
  if a.kind == 'H' then
    done[#done + 1] = a.m   -- a head without a tail before it: the stream began here
    i = i + 1
  elseif i == n then
    -- the last tail of the final range: its head may not be final yet (or beyond the
    -- ends looked at); dropped only when the whole range was looked at and it is old
    if n < tonumber(ARGV[8]) and now - a.stamp / 1000000 > tonumber(ARGV[4]) then
      done[#done + 1] = a.m
    end
    i = i + 1
  else
    local b = parse(ends[i + 1])
    if b.kind == 'H' and b.stamp - a.stamp <= window and b.stamp >= a.stamp then
      local kind, d10, d50 = judge(a, b)
      if kind then record(a, b, kind, d10, d50) end
      done[#done + 1] = a.m
      done[#done + 1] = b.m
      i = i + 2
    else
      done[#done + 1] = a.m  -- no head follows it within the window: nothing to compare
      i = i + 1
    end
  end
end
for j = 1, #done, 500 do
  redis.call('ZREM', KEYS[2], unpack(done, j, math.min(#done, j + 499)))
end
if listed > 0 then
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[10]) - 1)
end
return {jumps, burst, first}
