-- Record a placed call: create the verification, or give a pending one the new call's code.
-- KEYS[1] the phone's state
-- ARGV: id, client, phone, channel, code_hash, code_length, call_id, now_ms, ttl_ms,
--       max_checks, keep_ms (as reserve.lua), '1' if the verification is new
-- Returns the verification as public() does, or false if it ended while its call was placed.
local now = tonumber(ARGV[8])
local state = load_state(KEYS[1])
local id = ARGV[1]
local v = state[VERIFICATIONS][id]
if v == nil then
  if ARGV[12] ~= '1' then
    return false
  end
  v = {ARGV[2], 'pending', 0, tonumber(ARGV[10]), 1, 0, {}, ''}
  state[VERIFICATIONS][id] = v
elseif v[STATUS] ~= 'pending' or v[EXPIRES] <= now then
  return false
end
table.insert(v[CALLS], {string.sub(ARGV[4], 1, 1), now, ARGV[7]})
v[CODE] = ARGV[5]
v[CODE_LENGTH] = tonumber(ARGV[6])
v[EXPIRES] = now + tonumber(ARGV[9])
state[PHONE] = ARGV[3]
state[PENDING][ARGV[2]] = id
save_state(KEYS[1], state, now, tonumber(ARGV[11]))
return public(state, id)
