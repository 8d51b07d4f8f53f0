#!lua flags=no-writes
-- Per-channel store, read-only: the first finalised bucket of KEYS (newest first).
-- Reply: {position in KEYS, blob}, or {0}.
for i = 1, #KEYS do
  local blob = redis.call('GET', KEYS[i])
  if blob then return {i, blob} end
end
return {0}
