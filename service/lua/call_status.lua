-- Keep New-Tel's word for one call of a verification, and when it was asked.
-- KEYS[1] the phone's state. ARGV: id, index (1-based), status ('' while unknown),
-- checked_at_s
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][ARGV[1]]
local call = v and v[CALLS][tonumber(ARGV[2])]
if not call then
  return 0
end
call[CALL_STATUS], call[CALL_CHECKED_AT] = ARGV[3], tonumber(ARGV[4])
write_state(KEYS[1], state)
return 1
