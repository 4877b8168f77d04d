-- Cancel a pending verification. KEYS[1] the phone's state. ARGV: id, client, now_ms.
-- Returns the verification as public() does (unchanged if it was no longer pending), or
-- false if there is none.
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][ARGV[1]]
-- Expiry follows the caller's clock, as in check.lua: an expired one is not found.
if v == nil or v[CLIENT] ~= ARGV[2] or v[EXPIRES] <= tonumber(ARGV[3]) then
  return false
end
if v[STATUS] == 'pending' then
  v[STATUS], v[CODE] = 'canceled', ''
  write_state(KEYS[1], state)
end
return public(state, ARGV[1])
