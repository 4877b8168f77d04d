-- Shared by the scripts (prepended when they are loaded).
--
-- A phone's state is one string key holding a JSON array; a verification and a call are
-- arrays too. Positions, not names, and one key for everything of a phone: a pending
-- verification costs Redis about 300 bytes. service/state.py owns the format and names the
-- same positions (0-based there); a test compares the two lists below with it.
--   phone state   [phone, [call times, ms], {client: its pending verification},
--                  {verification: its fields}, [when each wrong code of the phone's guess
--                  budget is given back, ms], and while any is pending: {verification whose
--                  client has a webhook: how many events it has had}]
--   verification  [client, status, code_length, checks_left, sends, expires_at ms,
--                  [calls, oldest first], code hash]
--   call          [channel's initial, placed_at ms, New-Tel's call id] and, once New-Tel has
--                 been asked, its word for the call ('' while unknown) and when (s); an
--                 inbound call ('i') also keeps, after those, the number to call, the QR
--                 code's URI ('' if none) and when New-Tel stops waiting (ms)
--   event         [type, when (ms), verification id, phone, the verification's fields
--                  without its code hash]
-- The channel and the resend cooldown's end follow from the last call.
local PHONE, CALL_TIMES, PENDING, VERIFICATIONS, GUESSES, HOOKED = 1, 2, 3, 4, 5, 6
local CLIENT, STATUS, CODE_LENGTH, CHECKS_LEFT, SENDS, EXPIRES, CALLS, CODE =
  1, 2, 3, 4, 5, 6, 7, 8
local CALL_CHANNEL, CALL_PLACED_AT, CALL_ID, CALL_STATUS, CALL_CHECKED_AT = 1, 2, 3, 4, 5
local CALL_TO, CALL_QR, CALL_BEFORE = 6, 7, 8
local EVENT_TYPE, EVENT_AT, EVENT_VERIFICATION, EVENT_PHONE, EVENT_FIELDS = 1, 2, 3, 4, 5

-- The webhook outbox (service/store.py's key table). Every script that changes a phone takes
-- its shard's outbox as KEYS[2] (events: hash, event id -> event), KEYS[3] (due: zset, event
-- id -> when it may be delivered, ms) and KEYS[4] (expiry: zset, tag .. id's part -> when a
-- pending verification expires): one slot with the phone, so an event is written in the same
-- script as the change it reports, on a Cluster too.
-- A pending verification with events keeps its phone's key this long past its expiry, for
-- the sweep (service/webhooks.py) to report it expired even after every process was down.
local expired_kept_ms = 86400000
-- The phone's tag: its key is <prefix>{<tag's first hex digit>}<the other 15>. Worked out
-- only by a script that records an event.
local function phone_tag()
  local shard, rest = string.match(KEYS[1], '{(%x)}(%x+)$')
  return shard .. rest
end

local function load_state(key)
  local raw = redis.call('GET', key)
  if not raw then
    return {'', {}, {}, {}, {}, {}}
  end
  local state = cjson.decode(raw)
  -- A state written before the guess budget existed has no fifth element; the sixth is left
  -- out while no verification of the phone has events.
  state[GUESSES] = state[GUESSES] or {}
  state[HOOKED] = state[HOOKED] or {}
  return state
end

local function encode(state)
  if next(state[HOOKED]) == nil then
    state[HOOKED] = nil
  end
  local raw = cjson.encode(state)
  state[HOOKED] = state[HOOKED] or {}
  return raw
end

-- Record an event of verification `id` (the id's own part) in the outbox, due at once. Its id
-- names the verification and counts its events, so it is the same on every retry, and the
-- delivery can keep a verification's events in order (lua/claim.lua).
local function emit(state, id, kind, at, status)
  local n = state[HOOKED][id] + 1
  state[HOOKED][id] = n
  local v = state[VERIFICATIONS][id]
  local fields = {}
  for i = 1, CALLS do
    fields[i] = v[i]
  end
  fields[STATUS] = status or v[STATUS]
  local tag = phone_tag()
  local event_id = 'evt_' .. tag .. id .. '_' .. n
  local event = {}
  event[EVENT_TYPE], event[EVENT_AT], event[EVENT_VERIFICATION] = kind, at, 'vf_' .. tag .. id
  event[EVENT_PHONE], event[EVENT_FIELDS] = state[PHONE], fields
  redis.call('HSET', KEYS[2], event_id, cjson.encode(event))
  redis.call('ZADD', KEYS[3], at, event_id)
end

-- A verification with events ended (approved, max_checks_reached, canceled, expired): its last
-- event, and no expiry to sweep.
local function settle(state, id, kind, at, status)
  if state[HOOKED][id] then
    emit(state, id, kind, at, status)
    state[HOOKED][id] = nil
    redis.call('ZREM', KEYS[4], phone_tag() .. id)
  end
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
  redis.call('SET', key, encode(state), 'KEEPTTL')
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
      if v[STATUS] == 'pending' then
        settle(state, id, 'verification.expired', v[EXPIRES], 'expired')
      end
      verifications[id] = nil
    elseif state[HOOKED][id] then
      last = math.max(last, v[EXPIRES] + expired_kept_ms)
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
    redis.call('SET', key, encode(state), 'PX', last - now)
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
