-- Shared by the scripts (prepended when they are loaded).
--
-- A phone's state is one string key holding a JSON array; a verification and a call are
-- arrays too. Positions, not names, and one key for everything of a phone: a pending
-- verification costs Redis about 300 bytes. service/state.py owns the format and names the
-- same positions (0-based there); a test compares the two lists below with it.
--   phone state   [phone, [call times, ms], {client: its pending verification},
--                  {verification: its fields}, [when each wrong code of the phone's guess
--                  budget is given back, ms]]
--   verification  [client, status, code_length, checks_left, sends, expires_at ms,
--                  [calls, oldest first], code hash]
--   call          [channel's initial, placed_at ms, New-Tel's call id] and, once New-Tel has
--                 been asked, its word for the call ('' while unknown) and when (s); an
--                 inbound call ('i') also keeps, after those, the number to call, the QR
--                 code's URI ('' if none) and when New-Tel stops waiting (ms)
-- The channel and the resend cooldown's end follow from the last call.
local PHONE, CALL_TIMES, PENDING, VERIFICATIONS, GUESSES = 1, 2, 3, 4, 5
local CLIENT, STATUS, CODE_LENGTH, CHECKS_LEFT, SENDS, EXPIRES, CALLS, CODE =
  1, 2, 3, 4, 5, 6, 7, 8
local CALL_CHANNEL, CALL_PLACED_AT, CALL_ID, CALL_STATUS, CALL_CHECKED_AT = 1, 2, 3, 4, 5
local CALL_TO, CALL_QR, CALL_BEFORE = 6, 7, 8

local function load_state(key)
  local raw = redis.call('GET', key)
  if not raw then
    return {'', {}, {}, {}, {}}
  end
  local state = cjson.decode(raw)
  -- A state written before the guess budget existed has no fifth element.
  state[GUESSES] = state[GUESSES] or {}
  return state
end

-- The wrong codes that still count against the phone's guess budget at `now`, soonest
-- given back first.
local function live_guesses(state, now)
  local live = {}
  for _, back in ipairs(state[GUESSES]) do
    if back > now then
      live[#live + 1] = back
    end
  end
  table.sort(live)
  return live
end

-- A change that leaves every expiry as it was.
local function write_state(key, state)
  redis.call('SET', key, cjson.encode(state), 'KEEPTTL')
end

-- Write back without what no longer matters at `now` (calls older than `keep` ms, expired
-- verifications): the key lives exactly as long as the rest of it matters. TTLs are relative
-- to the caller's clock, so a skew between it and Redis's clock shortens nothing.
local function save_state(key, state, now, keep)
  local last = 0
  local times = {}
  for _, t in ipairs(state[CALL_TIMES]) do
    if t > now - keep then
      times[#times + 1] = t
      last = math.max(last, t + keep)
    end
  end
  state[CALL_TIMES] = times
  local guesses = live_guesses(state, now)
  if #guesses > 0 then
    last = math.max(last, guesses[#guesses])
  end
  state[GUESSES] = guesses
  local verifications = state[VERIFICATIONS]
  for id, v in pairs(verifications) do
    if v[EXPIRES] <= now then
      verifications[id] = nil
    else
      last = math.max(last, v[EXPIRES])
    end
  end
  for client, id in pairs(state[PENDING]) do
    if verifications[id] == nil then
      state[PENDING][client] = nil
    end
  end
  if last <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, cjson.encode(state), 'PX', last - now)
  end
end

-- The verification's latest call, the one that decides.
local function latest(v)
  return v[CALLS][#v[CALLS]]
end

-- The channel's initial of a verification's latest call.
local function channel(v)
  return latest(v)[CALL_CHANNEL]
end

-- A verification as callers may see it: [phone, the verification without its code hash].
local function public(state, id)
  local v = state[VERIFICATIONS][id]
  v[CODE] = nil
  return cjson.encode({state[PHONE], v})
end

-- The end-user IP's and the client's limits: a window of `window` ms cut into 60 slots, a
-- hash of slot number -> calls. The slot the window's start falls in counts whole, so no
-- `window` ever holds more than `limit` calls, and the window reopens at most one slot late.
-- Memory is bounded by the slots, not by the calls.
local function slot_size(window)
  return math.ceil(window / 60)
end

-- ms until one more call fits (0: it fits now). Slots out of the window are dropped.
local function window_wait(key, now, limit, window)
  local size = slot_size(window)
  local first = math.floor((now - window) / size)
  local flat = redis.call('HGETALL', key)
  local held, count = {}, 0
  for i = 1, #flat, 2 do
    local slot = tonumber(flat[i])
    if slot < first then
      redis.call('HDEL', key, flat[i])
    else
      local n = tonumber(flat[i + 1])
      held[#held + 1] = {slot, n}
      count = count + n
    end
  end
  if count < limit then
    return 0
  end
  table.sort(held, function(a, b) return a[1] < b[1] end)
  for _, slot in ipairs(held) do
    count = count - slot[2]
    if count < limit then
      return math.max(1, (slot[1] + 1) * size + window - now)
    end
  end
  return 1
end

local function window_take(key, now, window)
  local size = slot_size(window)
  local slot = math.floor(now / size)
  redis.call('HINCRBY', key, string.format('%d', slot), 1)
  redis.call('PEXPIRE', key, (slot + 1) * size + window - now)
end

-- Give back a call taken at `at`.
local function window_give(key, at, window)
  local slot = string.format('%d', math.floor(at / slot_size(window)))
  if tonumber(redis.call('HINCRBY', key, slot, -1)) <= 0 then
    redis.call('HDEL', key, slot)
  end
end
