-- Read many records of one workspace (all KEYS share the {workspace} hash tag) in one call.
-- Returns version, data, version, data, ... with false (nil) for an absent record.
local out = {}
for i = 1, #KEYS do
  local record = redis.call('HMGET', KEYS[i], 'v', 'd')
  out[2 * i - 1] = record[1] or false
  out[2 * i] = record[2] or false
end
return out
