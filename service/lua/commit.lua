-- Record a placed call: create the verification, or give a pending one the new call's code.
-- KEYS[1] the phone's state
-- ARGV[1]: JSON [id, client, phone, channel, code_hash, code_length, call_id, now_ms,
--       ttl_ms, max_checks, keep_ms (as reserve.lua), whether the verification is new]
-- Returns the verification as public() does, or false if it ended while its call was placed.
local id, client, phone, channel, code_hash, code_length, call_id, now, ttl, max_checks, keep,
  is_new = unpack(cjson.decode(ARGV[1]))
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][id]
if v == nil then
  if not is_new then
    return false
  end
  v = {client, 'pending', 0, max_checks, 1, 0, {}, ''}
  state[VERIFICATIONS][id] = v
elseif v[STATUS] ~= 'pending' or v[EXPIRES] <= now then
  return false
end
table.insert(v[CALLS], {string.sub(channel, 1, 1), now, call_id})
v[CODE] = code_hash
v[CODE_LENGTH] = code_length
v[EXPIRES] = now + ttl
state[PHONE] = phone
state[PENDING][client] = id
save_state(KEYS[1], state, now, keep)
return public(state, id)
