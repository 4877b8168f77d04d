-- Record a placed call: create the verification, or give an existing pending one the new
-- call's code. KEYS[1] verification   KEYS[2] client's pending id for the phone
-- ARGV: id, client, phone, channel, code_hmac, code_length, call_json, now_ms, ttl_ms,
--       max_checks, resend_at_ms
-- Returns the record as a flat field/value list, or {} if the verification ended meanwhile.
local expires = tonumber(ARGV[8]) + tonumber(ARGV[9])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'id', ARGV[1], 'client', ARGV[2], 'phone', ARGV[3],
    'status', 'pending', 'checks_left', ARGV[10], 'sends', 1, 'calls', '[' .. ARGV[7] .. ']')
elseif redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return {}
else
  local calls = redis.call('HGET', KEYS[1], 'calls')
  redis.call('HSET', KEYS[1], 'calls', string.sub(calls, 1, -2) .. ',' .. ARGV[7] .. ']')
end
redis.call('HSET', KEYS[1], 'channel', ARGV[4], 'code', ARGV[5], 'code_length', ARGV[6],
  'expires_at', expires, 'resend_at', ARGV[11])
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('SET', KEYS[2], ARGV[1], 'PXAT', expires)
return redis.call('HGETALL', KEYS[1])
