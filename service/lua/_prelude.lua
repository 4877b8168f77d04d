-- Shared by the scripts (prepended when they are loaded).
-- The record of a verification as one JSON string, without its code hash; false if none.
local function record_json(key)
  local flat = redis.call('HGETALL', key)
  if #flat == 0 then
    return false
  end
  local rec = {}
  for i = 1, #flat, 2 do
    rec[flat[i]] = flat[i + 1]
  end
  rec['code'] = nil
  return cjson.encode(rec)
end
