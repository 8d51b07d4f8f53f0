#!lua
-- dispatch-push (store/events.py mark_link): the seconds its dispatcher link was up.
-- KEYS[1]: minard:link:since; KEYS[2..]: minard:link:<I>:<b>, one per bucket;
-- ARGV[1]: the first second this writer marks (kept only if none is set: SET NX);
-- ARGV[2..]: the TTL of each bucket's mark (I × EXPIRE, as the pull-worker heartbeat).
redis.call('SET', KEYS[1], ARGV[1], 'NX')
for i = 2, #KEYS do
  redis.call('SET', KEYS[i], '1', 'EX', ARGV[i])
end
return #KEYS - 1
