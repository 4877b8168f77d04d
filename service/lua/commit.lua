-- Record a placed call: create the verification, or give an existing pending one the new
-- call's code. KEYS[1] verification   KEYS[2] client's pending id for the phone
-- ARGV: id, client, phone, channel, code_hmac, code_length, call, now_ms, ttl_ms,
--       max_checks, resend_at_ms
-- Each call is its own field ("c|placed_at|call_id|status|checked_at", under 64 bytes) so
-- the hash keeps Redis's compact listpack encoding.
-- Returns the record as one JSON string (cheaper to read than a flat array), or false if
-- the verification ended while its call was placed.
local expires = tonumber(ARGV[8]) + tonumber(ARGV[9])
local placed
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'client', ARGV[2], 'phone', ARGV[3], 'status', 'pending',
    'checks_left', ARGV[10], 'sends', 1)
  placed = 1
elseif redis.call('HGET', KEYS[1], 'status') ~= 'pending' then
  return false
else
  placed = tonumber(redis.call('HGET', KEYS[1], 'placed')) + 1
end
redis.call('HSET', KEYS[1], 'placed', placed, 'call:' .. placed, ARGV[7], 'channel', ARGV[4],
  'code', ARGV[5], 'code_length', ARGV[6], 'expires_at', expires, 'resend_at', ARGV[11])
redis.call('PEXPIREAT', KEYS[1], expires)
redis.call('SET', KEYS[2], ARGV[1], 'PXAT', expires)
return record_json(KEYS[1])
