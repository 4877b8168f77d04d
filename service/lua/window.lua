-- Sliding-window log on one key: admit ARGV[4] if fewer than ARGV[3] members lie within the
-- last ARGV[2] ms. KEYS[1] zset. ARGV: now_ms, window_ms, limit, member.
-- Returns 0 when admitted, else the ms until the oldest member leaves the window.
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now, ARGV[4])
redis.call('PEXPIRE', KEYS[1], window)
return 0
