-- Record a placed call: create the verification, or give a pending one the new call's code.
-- KEYS[1] the phone's state
-- ARGV: id, client, phone, channel, code_hmac, code_length, call_id, now_ms, ttl_ms,
--       max_checks, resend_at_ms, keep_ms (as reserve.lua), '1' if the verification is new
-- Returns the verification as public() does, or false if it ended while its call was placed.
local now = tonumber(ARGV[8])
local state = load_state(KEYS[1])
local id = ARGV[1]
local v = state.v[id]
if v == nil then
  if ARGV[13] ~= '1' then
    return false
  end
  v = {ARGV[2], 'pending', '', 0, tonumber(ARGV[10]), 1, 0, 0, {}, ''}
  state.v[id] = v
elseif v[STATUS] ~= 'pending' or v[EXPIRES] <= now then
  return false
end
local calls = v[CALLS]
calls[#calls + 1] = {string.sub(ARGV[4], 1, 1), now, ARGV[7], '', 0}
v[CHANNEL] = ARGV[4]
v[CODE] = ARGV[5]
v[CODE_LENGTH] = tonumber(ARGV[6])
v[EXPIRES] = now + tonumber(ARGV[9])
v[RESEND_AT] = tonumber(ARGV[11])
state.p = ARGV[3]
state.c[ARGV[2]] = id
save_state(KEYS[1], state, now, tonumber(ARGV[12]))
return public(state, id)
