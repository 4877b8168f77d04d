-- Shared by the scripts (prepended when they are loaded).
--
-- A phone's state is one string key holding JSON:
--   {"p": phone, "w": [times of its calls, ms], "c": {client: its pending verification},
--    "v": {verification: array indexed by the names below}}
-- Positions, not names, and one key for everything a phone holds: a pending verification
-- costs Redis about 330 bytes. A call is {channel's initial, placed_at ms, New-Tel's call id,
-- New-Tel's word for it ('' while unknown), when that was asked (s)}.
local CLIENT, STATUS, CHANNEL, CODE_LENGTH, CHECKS_LEFT, SENDS, EXPIRES, RESEND_AT, CALLS, CODE =
  1, 2, 3, 4, 5, 6, 7, 8, 9, 10

local function load_state(key)
  local raw = redis.call('GET', key)
  if not raw then
    return {p = '', w = {}, c = {}, v = {}}
  end
  return cjson.decode(raw)
end

-- A change that leaves every expiry as it was.
local function write_state(key, state)
  redis.call('SET', key, cjson.encode(state), 'KEEPTTL')
end

-- Write back without what no longer matters at `now` (calls older than `keep` ms, expired
-- verifications): the key lives exactly as long as the rest of it matters.
local function save_state(key, state, now, keep)
  local last = 0
  local calls = {}
  for _, t in ipairs(state.w) do
    if t > now - keep then
      calls[#calls + 1] = t
      last = math.max(last, t + keep)
    end
  end
  state.w = calls
  for id, v in pairs(state.v) do
    if v[EXPIRES] <= now then
      state.v[id] = nil
    else
      last = math.max(last, v[EXPIRES])
    end
  end
  for client, id in pairs(state.c) do
    if state.v[id] == nil then
      state.c[client] = nil
    end
  end
  if last <= now then
    redis.call('DEL', key)
  else
    redis.call('SET', key, cjson.encode(state), 'PXAT', last)
  end
end

-- A verification as callers may see it: {phone, verification without its code hash}.
local function public(state, id)
  local v = state.v[id]
  v[CODE] = nil
  return cjson.encode({state.p, v})
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
  redis.call('PEXPIREAT', key, (slot + 1) * size + window)
end

-- Give back a call taken at `at`.
local function window_give(key, at, window)
  local slot = string.format('%d', math.floor(at / slot_size(window)))
  if tonumber(redis.call('HINCRBY', key, slot, -1)) <= 0 then
    redis.call('HDEL', key, slot)
  end
end
