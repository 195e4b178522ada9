-- Apply changelog records to one slot's records (all KEYS share one hash tag, or are one key).
-- One (version, mode, data, expires_at_ms) quadruple per key, mode being
--   'w' write `data` as `version` if the key holds an older version (or none),
--   'd' delete the key (a tombstone).
-- expires_at_ms > 0 makes a written record expire then (a processed-event marker).
-- Returns how many keys were changed. Applying a record twice, or an older one after a newer
-- one, changes nothing: a changelog can be applied again from any offset.
local changed = 0
for i = 1, #KEYS do
  local base = 4 * (i - 1)
  local version = tonumber(ARGV[base + 1])
  local mode = ARGV[base + 2]
  if mode == 'd' then
    changed = changed + redis.call('DEL', KEYS[i])
  else
    local current = tonumber(redis.call('HGET', KEYS[i], 'v') or '0')
    if current < version then
      redis.call('HSET', KEYS[i], 'v', version, 'd', ARGV[base + 3])
      local expires = tonumber(ARGV[base + 4])
      if expires > 0 then
        redis.call('PEXPIREAT', KEYS[i], expires)
      end
      changed = changed + 1
    end
  end
end
return changed
