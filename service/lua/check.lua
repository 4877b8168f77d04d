-- Check a code: compare keyed hashes in constant time, count a wrong try, approve once.
-- KEYS[1] verification. ARGV: client, code_hmac, now_ms
-- Returns {outcome, status, checks_left, channel}: outcome is 'approved', 'wrong', 'spent'
-- (a check of a verification that is no longer pending), 'max_checks', or 'not_found'.
local rec = redis.call('HMGET', KEYS[1], 'client', 'status', 'code', 'checks_left', 'expires_at')
-- Expiry follows the caller's clock too; the key's TTL (the same instant) collects it.
if rec[1] ~= ARGV[1] or tonumber(rec[5]) <= tonumber(ARGV[3]) then
  return {'not_found'}
end
local function answer(outcome)
  local now = redis.call('HMGET', KEYS[1], 'status', 'checks_left', 'channel')
  return {outcome, now[1], now[2], now[3]}
end
if rec[2] == 'max_checks_reached' then
  return answer('max_checks')
end
if rec[2] ~= 'pending' then
  return answer('spent')
end

-- Both are hex HMACs of the same length; touch every byte whatever the first difference.
local stored, given, diff = rec[3], ARGV[2], 0
if #stored ~= #given then
  diff = 1
end
for i = 1, #stored do
  local d = string.byte(stored, i) - (string.byte(given, i) or 0)
  diff = diff + d * d
end

if diff == 0 then
  -- Single use: the hash goes with the approval.
  redis.call('HSET', KEYS[1], 'status', 'approved', 'code', '')
  return answer('approved')
end
local left = tonumber(rec[4]) - 1
if left <= 0 then
  redis.call('HSET', KEYS[1], 'status', 'max_checks_reached', 'checks_left', 0, 'code', '')
else
  redis.call('HSET', KEYS[1], 'checks_left', left)
end
return answer('wrong')
