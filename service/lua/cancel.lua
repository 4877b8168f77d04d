-- Cancel a pending verification. KEYS[1] the phone's state, KEYS[2..4] its shard's outbox
-- (_prelude.lua). ARGV: id, client, now_ms, keep_ms (as reserve.lua).
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
  settle(state, ARGV[1], 'verification.canceled', tonumber(ARGV[3]))
  save_state(KEYS[1], state, tonumber(ARGV[3]), tonumber(ARGV[4]))
end
return public(state, ARGV[1])
