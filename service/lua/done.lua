-- An event is done with (delivered, gone, dead, or for a client with no webhook any more): out
-- of the outbox, and the verification's next event, waiting behind it (claim.lua), due now.
-- KEYS: the shard's due (zset), events (hash) and tries (hash). ARGV: event id, now_ms
local id = ARGV[1]
redis.call('ZREM', KEYS[1], id)
redis.call('HDEL', KEYS[2], id)
redis.call('HDEL', KEYS[3], id)
local head, n = string.match(id, '^(.*_)(%d+)$')
local following = head .. (tonumber(n) + 1)
if redis.call('ZSCORE', KEYS[1], following) then
  redis.call('ZADD', KEYS[1], ARGV[2], following)
end
return 1
