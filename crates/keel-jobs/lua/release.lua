-- Hand leased jobs back (graceful shutdown, rate limit): to the front of their ready list,
-- the attempt not counted.
-- KEYS[1] = queue base; ARGV = id, attempt pairs (at most 1000 pairs)
local base = KEYS[1]
local now = now_ms()
local ids, atts = {}, {}
for i = 1, #ARGV, 2 do
  ids[#ids + 1] = ARGV[i]
  atts[#atts + 1] = tonumber(ARGV[i + 1])
end
local sts = hmget(base .. 'st', ids)
local back, new_st, by_prio = {}, {}, {}
for k, id in ipairs(ids) do
  local s = parse_st(sts[k])
  if s and s.st == 'running' and s.att == atts[k] then
    s.st = 'queued'
    s.att = s.att - 1
    back[#back + 1] = id
    new_st[#new_st + 1] = id
    new_st[#new_st + 1] = pack_st(s)
    add_to(by_prio, s.p, id)
  end
end
if #back == 0 then return 0 end
redis.call('ZREM', base .. 'inflight', unpack(back))
hset(base .. 'st', new_st)
local ts = hmget(base .. 't', back)
local new_t = {}
for k, id in ipairs(back) do
  local x = parse_t(ts[k])
  x.ea = now
  new_t[#new_t + 1] = id
  new_t[#new_t + 1] = pack_t(x)
end
hset(base .. 't', new_t)
-- LPUSH of a batch reverses it; push in reverse so the first handed back runs first.
for p, list in pairs(by_prio) do
  local reversed = {}
  for k = #list, 1, -1 do reversed[#reversed + 1] = list[k] end
  by_prio[p] = reversed
end
make_ready(base, by_prio, true)
return #back
