-- Give back what reserve.lua took for a call that was not placed.
-- KEYS[1] cooldown   KEYS[2] phone window   KEYS[3] verification (a resend's sends)
-- ARGV: member, resend ('1' when KEYS[3] took a send)
local cd = redis.call('GET', KEYS[1])
if cd and string.match(cd, ' (.*)$') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('ZREM', KEYS[2], ARGV[1])
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('HINCRBY', KEYS[3], 'sends', -1)
end
return 1
