-- Reserve one call to a phone: resend cooldown, per-phone sliding window, and (for a
-- resend) one of the verification's sends. All keys share the phone's hash tag.
-- KEYS[1] cooldown   KEYS[2] phone window   KEYS[3] client's pending id for the phone
-- KEYS[4] the verification to resend when ARGV[9] is '1'; otherwise only a key of the same
-- slot (a Cluster routes by every declared key) and the pending one in KEYS[3] is resent
-- ARGV: now_ms, cooldown_ms, limit, window_ms, member, max_sends, client, vkey_base, explicit
-- Returns {'ok', id_or_''} | {'rate_limited', retry_ms, 'cooldown' or 'phone'}
-- | {'max_sends', retry_ms}
-- | {'not_found', 0}
local now = tonumber(ARGV[1])
local cooldown = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
local window = tonumber(ARGV[4])

local explicit = ARGV[9] == '1'
local vkey = ''
local id = ''
if explicit then
  vkey = KEYS[4]
else
  id = redis.call('GET', KEYS[3]) or ''
  if id ~= '' then
    -- Same slot as KEYS[3] by construction (the id carries the phone's tag).
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

-- The cooldown holds "<until_ms> <member>", so it follows the caller's clock; its TTL only
-- collects it. When it and the window both refuse, the later one is the Retry-After.
local wait, reason = 0, 'cooldown'
local cd = redis.call('GET', KEYS[1])
if cd then
  wait = tonumber(string.match(cd, '^%d+')) - now
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now - window)
if redis.call('ZCARD', KEYS[2]) >= limit then
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
  local reopens = math.max(1, tonumber(oldest[2]) + window - now)
  if reopens > wait then
    wait, reason = reopens, 'phone'
  end
end
if wait > 0 then
  return {'rate_limited', wait, reason}
end

if cooldown > 0 then
  redis.call('SET', KEYS[1], (now + cooldown) .. ' ' .. ARGV[5], 'PX', cooldown)
end
redis.call('ZADD', KEYS[2], now, ARGV[5])
redis.call('PEXPIRE', KEYS[2], window)
if vkey ~= '' then
  redis.call('HINCRBY', vkey, 'sends', 1)
  if id == '' then
    id = redis.call('HGET', vkey, 'id')
  end
end
return {'ok', id}
