-- Cancel a pending verification. KEYS[1] verification. ARGV: client, now_ms.
-- Returns the record as JSON (unchanged if it was no longer pending), or false if there is
-- none.
local rec = redis.call('HMGET', KEYS[1], 'client', 'status', 'expires_at')
-- Expiry follows the caller's clock, as in check.lua: an expired one is not found.
if rec[1] ~= ARGV[1] or tonumber(rec[3]) <= tonumber(ARGV[2]) then
  return false
end
if rec[2] == 'pending' then
  redis.call('HSET', KEYS[1], 'status', 'canceled', 'code', '')
end
return record_json(KEYS[1])
