-- Sets (or with empty text clears) a topic, checking +t; returns setter, time and members.
-- ARGV: by, folded name, text
local by, fold, text = ARGV[1], ARGV[2], ARGV[3]
local c = client(by)
if not c then
  return {'NoSuchNick'}
end
local ck = B .. 'ch:' .. fold
if redis.call('EXISTS', ck) == 0 then
  return {'NoSuchChannel'}
end
local p = redis.call('HGET', B .. 'chm:' .. fold, by)
if not p then
  return {'NotOnChannel'}
end
if redis.call('HGET', ck, 't') == '1' and not has_flag(p, 'o') then
  return {'ChanOpNeeded'}
end
local setter, now = mask(c), now_s()
if text == '' then
  redis.call('HDEL', ck, 'topic', 'tby', 'tat')
else
  redis.call('HSET', ck, 'topic', text, 'tby', setter, 'tat', now)
end
return {'OK', setter, now, member_list(fold)}
