-- Joins a channel with every check (+k +l +i +b, channel limit, member cap), creating it
-- with the joiner as op. ARGV: id, folded name, name, key (opt), max channels, member cap
local id, fold = ARGV[1], ARGV[2]
local c = client(id)
if not c then
  return {'NoSuchNick'}
end
if redis.call('SCARD', B .. 'cc:' .. id) >= tonumber(ARGV[5]) then
  return {'TooManyChannels'}
end
local ck, mk = B .. 'ch:' .. fold, B .. 'chm:' .. fold
local created = redis.call('EXISTS', ck) == 0
if created then
  local now = now_s()
  redis.call('DEL', mk, B .. 'chb:' .. fold, B .. 'chi:' .. fold)
  redis.call('HSET', ck, 'name', ARGV[3], 'created', now, 'n', '1', 't', '1')
  redis.call('ZADD', B .. 'chans', now, fold)
else
  if redis.call('HEXISTS', mk, id) == 1 then
    return {'UserOnChannel'}
  end
  local ik = B .. 'chi:' .. fold
  local invited = redis.call('SISMEMBER', ik, id) == 1
  local m = redis.call('HMGET', ck, 'k', 'l', 'i')
  if m[1] and opt(ARGV[4]) ~= m[1] then
    return {'BadKey'}
  end
  local count = redis.call('HLEN', mk)
  if m[2] and count >= tonumber(m[2]) then
    return {'ChannelFull'}
  end
  if count >= tonumber(ARGV[6]) then
    return {'ChannelFull'}
  end
  if m[3] == '1' and not invited then
    return {'InviteOnly'}
  end
  if not invited and is_banned(fold, c) then
    return {'Banned'}
  end
  redis.call('SREM', ik, id)
end
local flags = ''
if created then flags = 'o' end
redis.call('HSET', mk, id, flags)
redis.call('SADD', B .. 'cc:' .. id, fold)
local n = 0
if created then n = 1 end
-- The member count only: each node tells its own local members from its channel index, so a
-- join into a channel of N members costs O(1) here, not N ids.
local t = redis.call('HMGET', ck, 'name', 'topic', 'tby', 'tat')
return {'OK', n, {t[1] or ARGV[3], t[2] or '', t[3] or '', t[4] or '0'}, redis.call('HLEN', mk)}
