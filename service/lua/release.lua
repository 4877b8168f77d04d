-- Give back what reserve.lua took for a call that was not placed: its member of the phone's
-- window (which is also what the cooldown reads) and, for a resend, the send.
-- KEYS[1] phone window   KEYS[2] verification (a resend's sends)   KEYS[3..] other windows
-- that reserve.lua took from in the same step
-- ARGV: member, resend ('1' when KEYS[2] took a send)
redis.call('ZREM', KEYS[1], ARGV[1])
for i = 3, #KEYS do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
if ARGV[2] == '1' and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HINCRBY', KEYS[2], 'sends', -1)
end
return 1
