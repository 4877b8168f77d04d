-- Check a code: compare keyed hashes in constant time, count a wrong try, approve once.
-- KEYS[1] the phone's state. ARGV: id, client, code_hmac, now_ms
-- Returns {outcome, status, checks_left, channel's initial}: outcome is 'approved', 'wrong', 'spent'
-- (a check of a verification that is no longer pending), 'max_checks', or 'not_found'.
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][ARGV[1]]
-- Expiry follows the caller's clock; the key's TTL (no earlier) collects it.
if v == nil or v[CLIENT] ~= ARGV[2] or v[EXPIRES] <= tonumber(ARGV[4]) then
  return {'not_found'}
end
local function answer(outcome)
  return {outcome, v[STATUS], v[CHECKS_LEFT], channel(v)}
end
if v[STATUS] == 'max_checks_reached' then
  return answer('max_checks')
end
if v[STATUS] ~= 'pending' then
  return answer('spent')
end

-- Both are keyed hashes of the same length; touch every byte whatever the first difference.
local stored, given, diff = v[CODE], ARGV[3], 0
if #stored ~= #given then
  diff = 1
end
for i = 1, #stored do
  local d = string.byte(stored, i) - (string.byte(given, i) or 0)
  diff = diff + d * d
end

if diff == 0 then
  -- Single use: the hash goes with the approval.
  v[STATUS], v[CODE] = 'approved', ''
elseif v[CHECKS_LEFT] <= 1 then
  v[STATUS], v[CHECKS_LEFT], v[CODE] = 'max_checks_reached', 0, ''
else
  v[CHECKS_LEFT] = v[CHECKS_LEFT] - 1
end
write_state(KEYS[1], state)
return answer(diff == 0 and 'approved' or 'wrong')
