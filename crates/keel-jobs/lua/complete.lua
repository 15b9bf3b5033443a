-- Ack a batch of attempts. An ack whose attempt no longer holds the lease is ignored.
-- KEYS[1] = queue base
-- ARGV = retention_ms, dead_retention_ms, recent_cap, then 5 fields per job:
--   id, attempt, outcome ('ok' | 'fail' | 'fatal'), result-or-error, backoff_ms
-- Returns the number of acks applied.
local base = KEYS[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local retention, dead_retention, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local done = {}
local recent = {}
local ok, failed, dead = 0, 0, 0
for i = 4, #ARGV, 5 do
  local id, att, outcome, text, backoff = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4])
  local key = base .. 'job:' .. id
  local f = redis.call('HMGET', key, 'st', 'att', 'max', 'uk')
  if f[1] == 'running' and f[2] == att then
    done[#done + 1] = id
    if outcome == 'ok' then
      redis.call('HSET', key, 'st', 'succeeded', 'fa', now, 'res', text)
      redis.call('PEXPIRE', key, retention)
      ok = ok + 1
      recent[#recent + 1] = id
      if f[4] and f[4] ~= '' then
        local ukey = base .. 'uniq:' .. f[4]
        if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
      end
    else
      failed = failed + 1
      if outcome == 'fail' and tonumber(f[2]) < tonumber(f[3]) then
        local at = now + backoff
        redis.call('HSET', key, 'st', 'retrying', 'err', text, 'ra', at)
        redis.call('ZADD', base .. 'scheduled', at, id)
      else
        redis.call('HSET', key, 'st', 'dead', 'err', text, 'fa', now)
        redis.call('PEXPIRE', key, dead_retention)
        redis.call('ZADD', base .. 'dead', now, id)
        dead = dead + 1
        recent[#recent + 1] = id
        if f[4] and f[4] ~= '' then
          local ukey = base .. 'uniq:' .. f[4]
          if redis.call('GET', ukey) == id then redis.call('DEL', ukey) end
        end
      end
    end
  end
end
if #done > 0 then
  redis.call('ZREM', base .. 'inflight', unpack(done))
end
if #recent > 0 then
  redis.call('LPUSH', base .. 'recent', unpack(recent))
  redis.call('LTRIM', base .. 'recent', 0, cap - 1)
end
if ok > 0 then redis.call('HINCRBY', base .. 'stats', 'succeeded', ok) end
if failed > 0 then redis.call('HINCRBY', base .. 'stats', 'failed', failed) end
if dead > 0 then redis.call('HINCRBY', base .. 'stats', 'dead', dead) end
return #done
