-- New-Tel's callback for an inbound call: the user called. Approve when the call it names is
-- the verification's latest, inbound, with New-Tel's call id, from the verification's phone.
-- KEYS[1] the phone's state, KEYS[2..4] its shard's outbox (_prelude.lua). ARGV: id's own
-- part, the call's placed_at ms (from the token), New-Tel's callId, the caller's number (''
-- when New-Tel sent none), now_ms, keep_ms (as reserve.lua)
-- Returns {outcome, the verification's client}: outcome is 'approved', 'duplicate' (this call
-- approved it already) or 'rejected' (client '').
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][ARGV[1]]
if v == nil or v[EXPIRES] <= tonumber(ARGV[5]) then
  return {'rejected', ''}
end
local call = latest(v)
if call[CALL_CHANNEL] ~= 'i' or call[CALL_PLACED_AT] ~= tonumber(ARGV[2])
    or tostring(call[CALL_ID]) ~= ARGV[3] then
  return {'rejected', ''}
end
if ARGV[4] ~= '' and ARGV[4] ~= state[PHONE] then
  return {'rejected', ''}
end
-- Only this call's callback approves a verification whose latest call is inbound.
if v[STATUS] == 'approved' then
  return {'duplicate', v[CLIENT]}
end
if v[STATUS] ~= 'pending' then
  return {'rejected', ''}
end
v[STATUS] = 'approved'
settle(state, ARGV[1], 'verification.approved', tonumber(ARGV[5]))
save_state(KEYS[1], state, tonumber(ARGV[5]), tonumber(ARGV[6]))
return {'approved', v[CLIENT]}
