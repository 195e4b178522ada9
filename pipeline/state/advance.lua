-- Move the state changelog's markers (all KEYS share one hash tag): KEYS[1] is the namespace's
-- epoch record, then one marker per key after it, each with ARGV (floor, version).
-- Nothing is written, and -1 returned, when the epoch is gone (Redis lost everything since)
-- or a marker is below its floor (what the caller last knew of it: Redis lost writes since);
-- else each marker takes its version unless it holds a greater one, and 1 is returned.
-- An entry may name the epoch record itself, with its version as the floor and the version:
-- an epoch written again after a loss has a lower version (pipeline.worker.durability), so
-- the caller learns that Redis was caught up since it knew the epoch.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return -1
end
for i = 2, #KEYS do
  local current = tonumber(redis.call('HGET', KEYS[i], 'v') or '0')
  if current < tonumber(ARGV[2 * i - 3]) then
    return -1
  end
end
for i = 2, #KEYS do
  local current = tonumber(redis.call('HGET', KEYS[i], 'v') or '0')
  local version = tonumber(ARGV[2 * i - 2])
  if current < version then
    redis.call('HSET', KEYS[i], 'v', version, 'd', '')
  end
end
return 1
