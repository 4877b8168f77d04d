-- Reserve one call to a phone: the resend cooldown, the phone's sliding windows (its calls,
-- newest last) and its guess budget, and for a resend one of the verification's sends.
-- KEYS[1] the phone's state, KEYS[2..4] its shard's outbox (_prelude.lua)
-- KEYS[5..] the end-user IP's and the client's windows, where they may share a script (one
-- Redis or Sentinel; a Cluster keeps them in other slots and takes them with window.lua)
-- ARGV[1]: JSON {now, cooldown (ms), phone_windows: [[limit, window_ms], ...], guess_limit,
--       max_sends, client, resent: the id's own part of the verification to resend ('': the
--       client's pending one, if any), windows: [[name, limit, window_ms] for each of
--       KEYS[5..]]} (one argument: redis-py packs each one in Python)
-- Returns {'ok', id of the verification resent or ''}
-- | {'rate_limited', retry_ms, 'cooldown', 'phone', 'phone_guesses' or the name of a
--    KEYS[5..] window}
-- | {'max_sends', retry_ms} | {'not_found', 0}
local a = cjson.decode(ARGV[1])
local now, cooldown, phone_windows, max_sends, client, resent, windows, guess_limit =
  a.now, a.cooldown, a.phone_windows, a.max_sends, a.client, a.resent, a.windows, a.guess_limit
local state = load_state(KEYS[1])

local explicit = resent ~= ''
local id = explicit and resent or state[PENDING][client]
local v = id and state[VERIFICATIONS][id]
-- Expiry follows the caller's clock, as in check.lua: an expired one is not resent.
if v and (v[CLIENT] ~= client or v[STATUS] ~= 'pending' or v[EXPIRES] <= now) then
  v = nil
end
if explicit and not v then
  return {'not_found', 0}
end
if v and v[SENDS] >= max_sends then
  return {'max_sends', math.max(1, v[EXPIRES] - now)}
end

-- When several limits refuse, the one that reopens last is the Retry-After.
local wait, reason = 0, 'cooldown'
local keep = cooldown
for _, t in ipairs(state[CALL_TIMES]) do
  if cooldown > 0 and t + cooldown - now > wait then
    wait = t + cooldown - now
  end
end
for _, phone_window in ipairs(phone_windows) do
  local limit, window = phone_window[1], phone_window[2]
  keep = math.max(keep, window)
  local inside = {}
  for _, t in ipairs(state[CALL_TIMES]) do
    if t > now - window then
      inside[#inside + 1] = t
    end
  end
  if #inside >= limit then
    table.sort(inside)
    local reopens = math.max(1, inside[#inside - limit + 1] + window - now)
    if reopens > wait then
      wait, reason = reopens, 'phone'
    end
  end
end
-- A phone whose guess budget is used up gets no new code until the window frees a guess.
local guesses = live_guesses(state, now)
if #guesses >= guess_limit then
  local reopens = math.max(1, guesses[#guesses - guess_limit + 1] - now)
  if reopens > wait then
    wait, reason = reopens, 'phone_guesses'
  end
end
for i = 5, #KEYS do
  local name, other_limit, other_window = unpack(windows[i - 4])
  local reopens = window_wait(KEYS[i], now, other_limit, other_window)
  if reopens > wait then
    wait, reason = reopens, name
  end
end
if wait > 0 then
  return {'rate_limited', wait, reason}
end

-- Nothing is taken unless every limit admits the call.
table.insert(state[CALL_TIMES], now)
for i = 5, #KEYS do
  window_take(KEYS[i], now, windows[i - 4][3])
end
if v then
  v[SENDS] = v[SENDS] + 1
end
save_state(KEYS[1], state, now, keep)
return {'ok', v and id or ''}
