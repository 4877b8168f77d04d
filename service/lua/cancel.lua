-- Cancel a pending verification. KEYS[1] verification. ARGV: client.
-- Returns the record (unchanged if it was no longer pending) or {} if there is none.
local rec = redis.call('HMGET', KEYS[1], 'client', 'status')
if rec[1] ~= ARGV[1] then
  return {}
end
if rec[2] == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'code', '')
end
return redis.call('HGETALL', KEYS[1])
