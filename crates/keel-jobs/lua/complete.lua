-- Ack a batch of attempts. An ack whose attempt no longer holds the lease is ignored.
-- KEYS[1] = queue base
-- ARGV = retention_ms, dead_retention_ms, recent_cap, then 5 fields per job:
--   id, attempt, outcome ('ok' | 'fail' | 'fatal'), result-or-error, backoff_ms
-- Returns the number of acks applied.
local base = KEYS[1]
local now = now_ms()
local retention, dead_retention, cap = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local ids, atts, outcomes, texts, backoffs = {}, {}, {}, {}, {}
for i = 4, #ARGV, 5 do
  ids[#ids + 1] = ARGV[i]
  atts[#atts + 1] = tonumber(ARGV[i + 1])
  outcomes[#outcomes + 1] = ARGV[i + 2]
  texts[#texts + 1] = ARGV[i + 3]
  backoffs[#backoffs + 1] = tonumber(ARGV[i + 4])
end
local sts = hmget(base .. 'st', ids)
local done, owned_k = {}, {}
for k, id in ipairs(ids) do
  local s = parse_st(sts[k])
  if s and s.st == 'running' and s.att == atts[k] then
    done[#done + 1] = id
    owned_k[#owned_k + 1] = k
  end
end
if #done == 0 then return 0 end
redis.call('ZREM', base .. 'inflight', unpack(done))
local ts = hmget(base .. 't', done)
local new_st, new_t, results, errors, expiring, retries, deaths, recent = {}, {}, {}, {}, {}, {}, {}, {}
local ok, failed, dead = 0, 0, 0
local succeeded = {}
for j, id in ipairs(done) do
  local k = owned_k[j]
  local s = parse_st(sts[k])
  local x = parse_t(ts[j])
  if outcomes[k] == 'ok' then
    s.st = 'succeeded'
    x.fa = now
    ok = ok + 1
    if texts[k] ~= '' then
      results[#results + 1] = id
      results[#results + 1] = texts[k]
    end
    expiring[#expiring + 1] = now + retention
    expiring[#expiring + 1] = id
    recent[#recent + 1] = id
    succeeded[#succeeded + 1] = id
    release_unique(base, id, s.uk)
  else
    failed = failed + 1
    errors[#errors + 1] = id
    errors[#errors + 1] = texts[k]
    if outcomes[k] == 'fail' and s.att < s.max then
      s.st = 'retrying'
      x.ra = now + backoffs[k]
      retries[#retries + 1] = x.ra
      retries[#retries + 1] = id
    else
      s.st = 'dead'
      x.fa = now
      dead = dead + 1
      deaths[#deaths + 1] = now
      deaths[#deaths + 1] = id
      expiring[#expiring + 1] = now + dead_retention
      expiring[#expiring + 1] = id
      recent[#recent + 1] = id
      release_unique(base, id, s.uk)
    end
  end
  new_st[#new_st + 1] = id
  new_st[#new_st + 1] = pack_st(s)
  new_t[#new_t + 1] = id
  new_t[#new_t + 1] = pack_t(x)
end
hset(base .. 'st', new_st)
hset(base .. 't', new_t)
hset(base .. 'res', results)
hset(base .. 'err', errors)
if #succeeded > 0 then redis.call('HDEL', base .. 'err', unpack(succeeded)) end
if #expiring > 0 then redis.call('ZADD', base .. 'exp', unpack(expiring)) end
if #retries > 0 then redis.call('ZADD', base .. 'scheduled', unpack(retries)) end
if #deaths > 0 then redis.call('ZADD', base .. 'dead', unpack(deaths)) end
if #recent > 0 then
  redis.call('LPUSH', base .. 'recent', unpack(recent))
  redis.call('LTRIM', base .. 'recent', 0, cap - 1)
end
if ok > 0 then redis.call('HINCRBY', base .. 'stats', 'succeeded', ok) end
if failed > 0 then redis.call('HINCRBY', base .. 'stats', 'failed', failed) end
if dead > 0 then redis.call('HINCRBY', base .. 'stats', 'dead', dead) end
return #done
