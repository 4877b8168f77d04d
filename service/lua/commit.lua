-- Record a placed call: create the verification, or give a pending one the new call's code.
-- KEYS[1] the phone's state, KEYS[2..4] its shard's outbox (_prelude.lua)
-- ARGV[1]: JSON {id (the id's own part), is_new, now, keep (as reserve.lua kept the calls),
--          client, phone, channel, code_hash, code_length, call_id, ttl, max_checks, hooked
--          (the client has a webhook: this new verification's events are recorded), and for
--          an inbound call call_to, qr_code_uri, call_before}
-- Returns the verification as public() does, or false if it ended while its call was placed.
local a = cjson.decode(ARGV[1])
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][a.id]
if v == nil then
  if not a.is_new then
    return false
  end
  v = {}
  v[CLIENT], v[STATUS], v[CODE_LENGTH], v[CHECKS_LEFT] = a.client, 'pending', 0, a.max_checks
  v[SENDS], v[EXPIRES], v[CALLS], v[CODE] = 1, 0, {}, ''
  state[VERIFICATIONS][a.id] = v
  if a.hooked then
    state[HOOKED][a.id] = 0
  end
elseif v[STATUS] ~= 'pending' or v[EXPIRES] <= a.now then
  return false
end
local call = {}
call[CALL_CHANNEL], call[CALL_PLACED_AT], call[CALL_ID] =
  string.sub(a.channel, 1, 1), a.now, a.call_id
if a.call_to then
  call[CALL_STATUS], call[CALL_CHECKED_AT] = '', 0
  call[CALL_TO], call[CALL_QR], call[CALL_BEFORE] = a.call_to, a.qr_code_uri, a.call_before
end
table.insert(v[CALLS], call)
v[CODE] = a.code_hash
v[CODE_LENGTH] = a.code_length
v[EXPIRES] = a.now + a.ttl
state[PHONE] = a.phone
state[PENDING][a.client] = a.id
if state[HOOKED][a.id] then
  emit(state, a.id, v[SENDS] == 1 and 'verification.started' or 'verification.resent', a.now)
  redis.call('ZADD', KEYS[4], v[EXPIRES], phone_tag() .. a.id)
end
save_state(KEYS[1], state, a.now, a.keep)
return public(state, a.id)
