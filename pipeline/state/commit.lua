-- Compare-and-set of one workspace's records (all KEYS share the {workspace} hash tag).
-- ARGV[1] = seconds before an expiring record (a processed-event marker) expires.
-- Then one (expected_version, mode, data) triple per key, mode being
--   'c' check only, 'w' write, 'x' write and expire, 'd' delete;
-- or, for the workspace's outbox index (a sorted set, never checked), one
-- (score, mode, member) triple, mode being 'z' add the member (an outbox record written by
-- this commit) at that score, 'r' remove it (an outbox record deleted by it).
-- Returns 1 when every record still had its expected version and the writes were made, else 0
-- and nothing was changed.
local ttl = tonumber(ARGV[1])
for i = 1, #KEYS do
  local mode = ARGV[3 * i]
  if mode ~= 'z' and mode ~= 'r' then
    local version = redis.call('HGET', KEYS[i], 'v') or '0'
    if version ~= ARGV[3 * i - 1] then
      return 0
    end
  end
end
for i = 1, #KEYS do
  local mode = ARGV[3 * i]
  if mode == 'd' then
    redis.call('DEL', KEYS[i])
  elseif mode == 'z' then
    redis.call('ZADD', KEYS[i], ARGV[3 * i - 1], ARGV[3 * i + 1])
  elseif mode == 'r' then
    redis.call('ZREM', KEYS[i], ARGV[3 * i + 1])
  elseif mode ~= 'c' then
    redis.call('HSET', KEYS[i], 'v', tonumber(ARGV[3 * i - 1]) + 1, 'd', ARGV[3 * i + 1])
    if mode == 'x' then
      redis.call('EXPIRE', KEYS[i], ttl)
    end
  end
end
return 1
