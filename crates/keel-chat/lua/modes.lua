-- Applies channel mode changes an op asked for; returns the indexes (from 0) of the changes
-- applied and the members. ARGV: by, folded name, then triples: mode, add '0'|'1', arg (opt).
-- The caller sends at most 64 changes and validates +l arguments (a positive u32).
local by, fold = ARGV[1], ARGV[2]
local c = client(by)
if not c then
  return {'NoSuchNick'}
end
local ck, mk = B .. 'ch:' .. fold, B .. 'chm:' .. fold
if redis.call('EXISTS', ck) == 0 then
  return {'NoSuchChannel'}
end
local p = redis.call('HGET', mk, by)
if not p then
  return {'NotOnChannel'}
end
if not has_flag(p, 'o') then
  return {'ChanOpNeeded'}
end
local setter, now = mask(c), now_s()
local applied = {}
for i = 3, #ARGV - 2, 3 do
  local mode, add, arg = ARGV[i], ARGV[i + 1] == '1', opt(ARGV[i + 2])
  local done = false
  if mode == 'n' or mode == 't' or mode == 'i' then
    local cur = redis.call('HGET', ck, mode) == '1'
    if cur ~= add then
      local v = '0'
      if add then v = '1' end
      redis.call('HSET', ck, mode, v)
      done = true
    end
  elseif mode == 'k' then
    if add and arg then
      redis.call('HSET', ck, 'k', arg)
      done = true
    elseif not add then
      done = redis.call('HDEL', ck, 'k') == 1
    end
  elseif mode == 'l' then
    if add and arg then
      redis.call('HSET', ck, 'l', arg)
      done = true
    elseif not add then
      done = redis.call('HDEL', ck, 'l') == 1
    end
  elseif mode == 'b' and arg then
    local bk = B .. 'chb:' .. fold
    local la = string.lower(arg)
    local bans = redis.call('LRANGE', bk, 0, MAXBANS - 1)
    if add then
      local dup = false
      for _, b in ipairs(bans) do
        if string.lower(ban_mask(b)) == la then
          dup = true
          break
        end
      end
      if not dup and #bans < MAXBANS then
        redis.call('RPUSH', bk, arg .. '\n' .. setter .. '\n' .. now)
        done = true
      end
    else
      for _, b in ipairs(bans) do
        if string.lower(ban_mask(b)) == la then
          redis.call('LREM', bk, 0, b)
          done = true
        end
      end
    end
  elseif (mode == 'o' or mode == 'v') and arg then
    local target = redis.call('HGET', B .. 'nicks', string.lower(arg))
    local f = target and redis.call('HGET', mk, target)
    if f then
      local op, voice = has_flag(f, 'o'), has_flag(f, 'v')
      local cur = voice
      if mode == 'o' then cur = op end
      if cur ~= add then
        if mode == 'o' then op = add else voice = add end
        local nf = ''
        if op then nf = nf .. 'o' end
        if voice then nf = nf .. 'v' end
        redis.call('HSET', mk, target, nf)
        done = true
      end
    end
  end
  if done then
    applied[#applied + 1] = (i - 3) / 3
  end
end
return {'OK', applied, member_list(fold)}
