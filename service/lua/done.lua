-- Events done with (delivered, gone, dead, or of a client with no webhook any more): out of
-- the outbox, and each verification's next event, waiting behind its predecessor
-- (claim.lua), due now.
-- KEYS: for each shard with events here, its due (zset), events (hash) and tries (hash).
-- ARGV: now_ms, then for each shard in KEYS' order: how many events, and their ids
local now, at = ARGV[1], 2
for k = 1, #KEYS, 3 do
  local due, events, tries = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local count = tonumber(ARGV[at])
  for i = at + 1, at + count do
    local id = ARGV[i]
    redis.call('ZREM', due, id)
    redis.call('HDEL', events, id)
    redis.call('HDEL', tries, id)
    local head, n = string.match(id, '^(.*_)(%d+)$')
    local following = head .. (tonumber(n) + 1)
    if redis.call('ZSCORE', due, following) then
      redis.call('ZADD', due, now, following)
    end
  end
  at = at + count + 1
end
return 1
