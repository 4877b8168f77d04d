-- Store New-Tel's word for call ARGV[1] (1-based) of a verification, keeping its TTL.
-- KEYS[1] verification. ARGV: index, status, checked_at_ms
local calls = redis.call('HGET', KEYS[1], 'calls')
if not calls then
  return 0
end
local list = cjson.decode(calls)
local call = list[tonumber(ARGV[1])]
if not call then
  return 0
end
call['status'] = ARGV[2]
call['checked_at'] = tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'calls', cjson.encode(list))
return 1
