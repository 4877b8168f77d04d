-- Take up to ARGV[3] due events for delivery (service/webhooks.py). Each is leased: its due
-- time moves to the lease's end, so the events of a process that dies are due again after it.
-- A verification's events go in order: an event whose predecessor is still to be delivered
-- waits right behind it (done.lua brings it forward when the predecessor is done).
-- KEYS: for each shard, in the order to serve them, its due (zset), events (hash) and tries
-- (hash). ARGV: now_ms, lease_ms, count
-- Returns {event id, failed attempts so far, event JSON, ...}
local now, lease, count = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local out, taken = {}, 0
for k = 1, #KEYS, 3 do
  local due, events, tries = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, count - taken)) do
    local head, n = string.match(id, '^(.*_)(%d+)$')
    local before = tonumber(n) > 1 and redis.call('ZSCORE', due, head .. (tonumber(n) - 1))
    local event = redis.call('HGET', events, id)
    if before then
      redis.call('ZADD', due, tonumber(before) + 1, id)
    elseif not event then
      redis.call('ZREM', due, id)
    else
      redis.call('ZADD', due, now + lease, id)
      out[#out + 1] = id
      out[#out + 1] = tonumber(redis.call('HGET', tries, id) or '0')
      out[#out + 1] = event
      taken = taken + 1
    end
  end
  if taken >= count then
    break
  end
end
return out
