-- Reserve one call to a phone: the resend cooldown and the per-phone sliding window (one
-- zset: its newest member is the last call), and for a resend one of the verification's
-- sends. All keys share the phone's hash tag.
-- KEYS[1] phone window   KEYS[2] client's pending id for the phone
-- KEYS[3] the verification to resend when ARGV[9] is '1'; otherwise only a key of the same
-- slot (a Cluster routes by every declared key) and the pending one in KEYS[2] is resent
-- KEYS[4..] more windows to take from in the same step (the end-user IP's, the client's
-- budget) where they may share a script: a single Redis or Sentinel, not a Cluster
-- ARGV: now_ms, cooldown_ms, limit, window_ms, member, max_sends, client, vkey_base, explicit,
--       then name, limit, window_ms for each of KEYS[4..]
-- Returns {'ok', id_or_''} | {'rate_limited', retry_ms, 'cooldown' or 'phone'}
-- | {'rate_limited', retry_ms, name of a KEYS[4..] window}
-- | {'max_sends', retry_ms} | {'not_found', 0}
local now = tonumber(ARGV[1])
local cooldown = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])

local explicit = ARGV[9] == '1'
local vkey = ''
local id = ''
if explicit then
  vkey = KEYS[3]
else
  id = redis.call('GET', KEYS[2]) or ''
  if id ~= '' then
    -- Same slot as KEYS[2] by construction (the id carries the phone's tag).
    vkey = ARGV[8] .. string.sub(id, 20)
  end
end
if vkey ~= '' then
  local rec = redis.call('HMGET', vkey, 'client', 'status', 'sends', 'expires_at')
  -- Expiry follows the caller's clock, as in check.lua: an expired one is not resent.
  if rec[1] ~= ARGV[7] or rec[2] ~= 'pending' or (tonumber(rec[4]) or 0) <= now then
    if explicit then
      return {'not_found', 0}
    end
    vkey, id = '', ''
  elseif tonumber(rec[3]) >= tonumber(ARGV[6]) then
    return {'max_sends', math.max(1, tonumber(rec[4]) - now)}
  end
end

-- Calls older than both the window and the cooldown matter to neither. When the cooldown
-- and the window both refuse, the later one is the Retry-After.
local keep = math.max(window, cooldown)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - keep)
local wait, reason = 0, 'cooldown'
if cooldown > 0 then
  local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if last[2] then
    wait = tonumber(last[2]) + cooldown - now
  end
end
local inside = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. (now - window), '+inf',
  'WITHSCORES', 'LIMIT', 0, limit)
if #inside / 2 >= limit then
  local reopens = math.max(1, tonumber(inside[2]) + window - now)
  if reopens > wait then
    wait, reason = reopens, 'phone'
  end
end
for i = 4, #KEYS do
  local a = 10 + (i - 4) * 3
  local other_limit, other_window = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  redis.call('ZREMRANGEBYSCORE', KEYS[i], '-inf', now - other_window)
  if redis.call('ZCARD', KEYS[i]) >= other_limit then
    local oldest = redis.call('ZRANGE', KEYS[i], 0, 0, 'WITHSCORES')
    local reopens = math.max(1, tonumber(oldest[2]) + other_window - now)
    if reopens > wait then
      wait, reason = reopens, ARGV[a]
    end
  end
end
if wait > 0 then
  return {'rate_limited', wait, reason}
end

-- Nothing is taken unless every limit admits the call.
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], keep)
for i = 4, #KEYS do
  redis.call('ZADD', KEYS[i], now, ARGV[5])
  redis.call('PEXPIRE', KEYS[i], tonumber(ARGV[10 + (i - 4) * 3 + 2]))
end
if vkey ~= '' then
  redis.call('HINCRBY', vkey, 'sends', 1)
end
return {'ok', id}
