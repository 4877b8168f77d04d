-- Check a code: compare keyed hashes in constant time, count a wrong try against the
-- verification and the phone's guess budget, approve once.
-- KEYS[1] the phone's state, KEYS[2..4] its shard's outbox (_prelude.lua).
-- ARGV: id, client, code_hmac, now_ms, guess_limit, guess_window_ms, keep_ms (as reserve.lua)
-- Returns {outcome, status, checks_left, channel's initial}: outcome is 'approved', 'wrong', 'spent'
-- (a check of a verification that is no longer pending), 'max_checks', 'no_code' (the latest
-- call is inbound: nothing to type) or 'not_found'.
local state = load_state(KEYS[1])
local v = state[VERIFICATIONS][ARGV[1]]
local now = tonumber(ARGV[4])
-- Expiry follows the caller's clock; the key's TTL (no earlier) collects it.
if v == nil or v[CLIENT] ~= ARGV[2] or v[EXPIRES] <= now then
  return {'not_found'}
end
local function answer(outcome)
  return {outcome, v[STATUS], v[CHECKS_LEFT], channel(v)}
end
if channel(v) == 'i' then
  return answer('no_code')
end
if v[STATUS] == 'max_checks_reached' then
  return answer('max_checks')
end
if v[STATUS] ~= 'pending' then
  return answer('spent')
end

-- The phone's guess budget spans its verifications and clients. Once it is used up, every
-- pending verification of the phone ends: no code of theirs may be guessed any more.
local guess_limit = tonumber(ARGV[5])
local guesses = live_guesses(state, now)
local keep = tonumber(ARGV[7])
-- A phone with webhooks is written back whole (save_state: a settled verification no longer
-- keeps the key past its expiry); any other the cheaper way, its expiries as they were.
local hooked = next(state[HOOKED]) ~= nil
local function store(at_least_ms)
  if hooked then
    save_state(KEYS[1], state, now, keep)
    return
  end
  write_state(KEYS[1], state)
  -- The key lives at least as long as the guesses count (TTLs relative to the caller's clock).
  if at_least_ms and redis.call('PTTL', KEYS[1]) < at_least_ms then
    redis.call('PEXPIRE', KEYS[1], at_least_ms)
  end
end
local function used_up(id, other)
  other[STATUS], other[CHECKS_LEFT], other[CODE] = 'max_checks_reached', 0, ''
  settle(state, id, 'verification.max_checks_reached', now)
end
local function end_pending()
  for id, other in pairs(state[VERIFICATIONS]) do
    if other[STATUS] == 'pending' then
      used_up(id, other)
    end
  end
end
if #guesses >= guess_limit then
  end_pending()
  store()
  return answer('max_checks')
end

-- Both are keyed hashes of the same length; touch every byte whatever the first difference.
local stored, given, diff = v[CODE], ARGV[3], 0
if #stored ~= #given then
  diff = 1
end
for i = 1, #stored do
  local d = string.byte(stored, i) - (string.byte(given, i) or 0)
  diff = diff + d * d
end

if diff == 0 then
  -- Single use: the hash goes with the approval.
  v[STATUS], v[CODE] = 'approved', ''
  settle(state, ARGV[1], 'verification.approved', now)
  store()
  return answer('approved')
end
if v[CHECKS_LEFT] <= 1 then
  used_up(ARGV[1], v)
else
  v[CHECKS_LEFT] = v[CHECKS_LEFT] - 1
end
local back = now + tonumber(ARGV[6])
guesses[#guesses + 1] = back
state[GUESSES] = guesses
if #guesses >= guess_limit then
  end_pending()
end
store(back - now)
return answer('wrong')
