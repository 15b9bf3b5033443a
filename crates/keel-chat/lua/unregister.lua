-- Removes a client from the network (the QUIT): record, nick, presence, channels, MONITOR
-- list; records WHOWAS. Only the first caller gets the record, so exactly one QUIT is sent.
-- ARGV: id, whowas entries kept per nick, whowas ttl seconds
-- Work is bounded by the client's channels (max channels) times the member cap, and by the
-- MONITOR list limit.
local id = ARGV[1]
local c = client(id)
if not c then
  return {'None'}
end
redis.call('DEL', B .. 'c:' .. id)
redis.call('HDEL', B .. 'rec', id)
redis.call('ZREM', B .. 'presence', id)
redis.call('SREM', B .. 'invis', id)
redis.call('SREM', B .. 'opers', id)
local fold = string.lower(c[2])
if redis.call('HGET', B .. 'nicks', fold) == id then
  redis.call('HDEL', B .. 'nicks', fold)
end
local seen, peers = {}, {}
for _, ch in ipairs(redis.call('SMEMBERS', B .. 'cc:' .. id)) do
  redis.call('HDEL', B .. 'chm:' .. ch, id)
  for _, m in ipairs(members(ch)) do
    if not seen[m] then
      seen[m] = true
      peers[#peers + 1] = m
    end
  end
  drop_channel_if_empty(ch)
end
redis.call('DEL', B .. 'cc:' .. id)
for _, n in ipairs(redis.call('SMEMBERS', B .. 'mon:' .. id)) do
  redis.call('SREM', B .. 'watch:' .. n, id)
end
redis.call('DEL', B .. 'mon:' .. id)
local ww = B .. 'ww:' .. fold
redis.call('LPUSH', ww, c[2] .. '\n' .. c[3] .. '\n' .. c[4] .. '\n' .. now_s() .. '\n' .. c[5])
redis.call('LTRIM', ww, 0, tonumber(ARGV[2]) - 1)
redis.call('EXPIRE', ww, ARGV[3])
return {'OK', pack(c), id_list(peers)}
