-- Give back what reserve.lua took for a call that was not placed: its entry in the phone's
-- calls (which is also what the cooldown reads) and, for a resend, the send.
-- KEYS[1] the phone's state, KEYS[2..4] its shard's outbox (_prelude.lua), KEYS[5..] the
-- windows reserve.lua took from in the same step
-- ARGV: reserved_at_ms, keep_ms (as reserve.lua kept the calls), id of the verification
--       resent or '', then window_ms for each of KEYS[5..]
local at = tonumber(ARGV[1])
local state = load_state(KEYS[1])
for i, t in ipairs(state[CALL_TIMES]) do
  if t == at then
    table.remove(state[CALL_TIMES], i)
    break
  end
end
local v = state[VERIFICATIONS][ARGV[3]]
if v then
  v[SENDS] = v[SENDS] - 1
end
save_state(KEYS[1], state, at, tonumber(ARGV[2]))
for i = 5, #KEYS do
  window_give(KEYS[i], at, tonumber(ARGV[4 + i - 5]))
end
return 1
