-- Helpers prepended to every chat script that works on the shared state (engine/redis.rs).
-- KEYS[1] is the base of all shared chat state, `prefix:{chat}:`: every key a script builds
-- from it carries the same hash tag, so a script touches one Redis Cluster slot.
-- Client ids travel as decimal strings (never converted to Lua numbers).
local B = KEYS[1]
local MAXBANS = 100

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function now_s()
  return redis.call('TIME')[1]
end

-- A client's record {id, nick, user, host, realname, account, away, inv, oper, signon}
-- (false for a missing account or away), or nil when the client is unknown.
local function client(id)
  local f = redis.call('HMGET', B .. 'c:' .. id,
    'id', 'nick', 'user', 'host', 'realname', 'account', 'away', 'inv', 'oper', 'signon')
  if not f[1] then return nil end
  return f
end

-- Replies carry a record as one string (see `pack`) and id lists as one comma-separated
-- string: one reply object instead of one per field or id.
local function opt_out(v)
  if v then return '1' .. v end
  return '0'
end

-- A record packed as its fields joined by newlines (which no IRC parameter contains), the
-- optional account and away as '0' or '1' .. value.
local function pack(c)
  return table.concat({c[1], c[2] or '', c[3] or '', c[4] or '', c[5] or '', opt_out(c[6]),
    opt_out(c[7]), c[8] or '0', c[9] or '0', c[10] or '0'}, '\n')
end

-- `rec` keeps every client's packed record (id -> pack), written by each script that changes
-- a record, so a channel snapshot reads its members' records with one HMGET per 500 members.
local function save_record(id)
  local c = client(id)
  if c then
    redis.call('HSET', B .. 'rec', id, pack(c))
  end
  return c
end

local function id_list(ids)
  return table.concat(ids, ',')
end

local function mask(c)
  return c[2] .. '!' .. c[3] .. '@' .. c[4]
end

-- IRC glob (`*`, `?`) over bytes; the caller casefolds both sides.
local function glob(p, s)
  local pi, si, star, mark = 1, 1, nil, 1
  local pl, sl = #p, #s
  while si <= sl do
    local pc = string.sub(p, pi, pi)
    if pi <= pl and (pc == '?' or pc == string.sub(s, si, si)) then
      pi = pi + 1
      si = si + 1
    elseif pi <= pl and pc == '*' then
      star = pi
      mark = si
      pi = pi + 1
    elseif star then
      pi = star + 1
      mark = mark + 1
      si = mark
    else
      return false
    end
  end
  while pi <= pl and string.sub(p, pi, pi) == '*' do
    pi = pi + 1
  end
  return pi > pl
end

-- A ban entry is `mask \n setter \n time`.
local function ban_mask(entry)
  return string.match(entry, '^([^\n]*)')
end

local function is_banned(fold, c)
  local m = string.lower(mask(c))
  local bans = redis.call('LRANGE', B .. 'chb:' .. fold, 0, MAXBANS - 1)
  for _, b in ipairs(bans) do
    if glob(string.lower(ban_mask(b)), m) then
      return true
    end
  end
  return false
end

local function has_flag(flags, f)
  return flags ~= nil and flags ~= false and string.find(flags, f, 1, true) ~= nil
end

-- Member ids of a channel (bounded by the member cap that join enforces).
local function members(fold)
  return redis.call('HKEYS', B .. 'chm:' .. fold)
end

local function member_list(fold)
  return id_list(members(fold))
end

local function drop_channel_if_empty(fold)
  if redis.call('HLEN', B .. 'chm:' .. fold) == 0 then
    redis.call('DEL', B .. 'ch:' .. fold, B .. 'chm:' .. fold, B .. 'chb:' .. fold,
      B .. 'chi:' .. fold)
    redis.call('ZREM', B .. 'chans', fold)
  end
end

local function remove_member(fold, id)
  redis.call('HDEL', B .. 'chm:' .. fold, id)
  redis.call('SREM', B .. 'cc:' .. id, fold)
  drop_channel_if_empty(fold)
end

-- {name, created, topic, topic setter, topic time, n, t, i, key, limit, bans, members}, where
-- members are strings `flags \n packed record`; nil when the channel does not exist.
local function snapshot(fold)
  local h = redis.call('HMGET', B .. 'ch:' .. fold,
    'name', 'created', 'topic', 'tby', 'tat', 'n', 't', 'i', 'k', 'l')
  if not h[1] then return nil end
  local bans = redis.call('LRANGE', B .. 'chb:' .. fold, 0, MAXBANS - 1)
  local mem = {}
  local flat = redis.call('HGETALL', B .. 'chm:' .. fold)
  local i = 1
  while i <= #flat do
    local batch, flags = {}, {}
    while i <= #flat and #batch < 500 do
      batch[#batch + 1] = flat[i]
      flags[#flags + 1] = flat[i + 1]
      i = i + 2
    end
    local recs = redis.call('HMGET', B .. 'rec', unpack(batch))
    for k = 1, #batch do
      if recs[k] then
        mem[#mem + 1] = flags[k] .. '\n' .. recs[k]
      end
    end
  end
  h[11] = bans
  h[12] = mem
  return h
end

-- An optional value travels as '0' (none) or '1' .. value.
local function opt(v)
  if string.sub(v, 1, 1) == '1' then
    return string.sub(v, 2)
  end
  return nil
end
