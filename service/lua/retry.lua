-- An event to try again at ARGV[2] (ms), after ARGV[3] failed attempts ('': a delivery put
-- off, no attempt made). Nothing if it is done with meanwhile (another process delivered it
-- after this one's lease ran out).
-- KEYS: the shard's due (zset) and tries (hash). ARGV: event id, due_ms, failed attempts or ''
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
if ARGV[3] ~= '' then
  redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
end
return 1
