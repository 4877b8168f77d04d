-- One window of its own (a Cluster keeps the IP's and the client's apart from the phone).
-- KEYS[1] window. ARGV: now_ms, window_ms, limit, 'take', 'peek' (only say when one more
-- call fits) or 'give' (give back a call taken at now_ms).
-- Returns 0 when taken (or given back, or it fits), else the ms until one more call fits.
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
if ARGV[4] == 'give' then
  window_give(KEYS[1], now, window)
  return 0
end
local wait = window_wait(KEYS[1], now, tonumber(ARGV[3]), window)
if wait == 0 and ARGV[4] == 'take' then
  window_take(KEYS[1], now, window)
end
return wait
