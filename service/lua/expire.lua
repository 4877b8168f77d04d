-- The expiry sweep, for one verification of the schedule whose time has come: its phone is
-- written back as any change would write it, which reports it expired if it was still pending
-- (save_state). A verification approved at the last moment is no longer in the schedule: the
-- approval and this script are one slot's scripts, one after the other.
-- KEYS[1] the phone's state, KEYS[2..4] its shard's outbox. ARGV: the id's own part, now_ms,
-- keep_ms (as reserve.lua)
-- Returns 1 (swept), 0 (not expired yet: nothing done) or -1 (its phone's key is gone, and the
-- event with it).
local now = tonumber(ARGV[2])
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[4], phone_tag() .. ARGV[1])
  return -1
end
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][ARGV[1]]
if v and v[EXPIRES] > now then
  return 0
end
save_state(KEYS[1], state, now, tonumber(ARGV[3]))
redis.call('ZREM', KEYS[4], phone_tag() .. ARGV[1])
return 1
