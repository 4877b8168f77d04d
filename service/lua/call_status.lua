-- Store New-Tel's word for one call of a verification, keeping the key's TTL.
-- KEYS[1] verification. ARGV: index (1-based), status ('' while unknown), checked_at_s
-- A call field is "c|placed_at|call_id|status|checked_at".
local field = 'call:' .. ARGV[1]
local call = redis.call('HGET', KEYS[1], field)
if not call then
  return 0
end
local channel, placed, id = string.match(call, '^([^|]*)|([^|]*)|([^|]*)|')
redis.call('HSET', KEYS[1], field,
  channel .. '|' .. placed .. '|' .. id .. '|' .. ARGV[2] .. '|' .. ARGV[3])
return 1
