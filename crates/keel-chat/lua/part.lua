-- Leaves a channel; returns the members before leaving. ARGV: id, folded name
local id, fold = ARGV[1], ARGV[2]
if redis.call('EXISTS', B .. 'ch:' .. fold) == 0 then
  return {'NoSuchChannel'}
end
if redis.call('HEXISTS', B .. 'chm:' .. fold, id) == 0 then
  return {'NotOnChannel'}
end
local mem = member_list(fold)
remove_member(fold, id)
return {'OK', mem}
