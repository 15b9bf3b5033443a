-- A CHATHISTORY query over one conversation (see history_append.lua for the layout).
-- KEYS[1] = conversation base `prefix:{h:KEY}:`
-- ARGV: query ('latest'|'before'|'after'|'around'|'between'), limit (capped by the caller),
-- cutoff ms (entries older are expired), then reference kind ('' | 'm' msgid | 't' time) and
-- value, twice.
-- Positions: a msgid is its entry; a time is the first entry at or after it ("exact" when its
-- time equals the reference); "end" is past the last entry. Returns the entries (field/value
-- arrays), oldest first.
local sk, ik = KEYS[1] .. 's', KEYS[1] .. 'ids'
local query, limit, cutoff = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])

local function parse(id)
  local a, b = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(a) or 0, tonumber(b) or 0
end

-- a < b, where nil is the end of the stream.
local function less(a, b)
  if a == nil then return false end
  if b == nil then return true end
  local am, as = parse(a)
  local bm, bs = parse(b)
  return am < bm or (am == bm and as < bs)
end

local function field(f, name)
  for i = 1, #f, 2 do
    if f[i] == name then return f[i + 1] end
  end
  return nil
end

-- found, id (nil = end), exact
local function position(kind, val)
  if kind == 'm' then
    local id = redis.call('HGET', ik, val)
    if not id then return false, nil, false end
    local e = redis.call('XRANGE', sk, id, id)
    if not e[1] then return false, nil, false end
    return true, id, true
  elseif kind == 't' then
    local e = redis.call('XRANGE', sk, val, '+', 'COUNT', 1)
    if not e[1] then return true, nil, false end
    return true, e[1][1], tonumber(field(e[1][2], 't')) == tonumber(val)
  end
  return false, nil, false
end

local cut = string.format('%d', cutoff) .. '-0'
-- lo: {id, exclusive} or nil (start); hi: an id (exclusive) or nil (end)
local lo, hi, from_end = nil, nil, false
local f1, p1, e1 = position(ARGV[4], ARGV[5])

if query == 'latest' then
  from_end = true
  if f1 then
    if p1 == nil then return {} end
    lo = {p1, e1}
  end
elseif query == 'before' then
  if not f1 then return {} end
  hi = p1
  from_end = true
elseif query == 'after' then
  if not f1 or p1 == nil then return {} end
  lo = {p1, e1}
elseif query == 'around' then
  if not f1 then return {} end
  local pivot = '+'
  if p1 then pivot = '(' .. p1 end
  local half = math.floor(limit / 2)
  local start = p1
  if half > 0 then
    local prev = redis.call('XREVRANGE', sk, pivot, cut, 'COUNT', half)
    if prev[1] then start = prev[#prev][1] end
  end
  if start == nil then return {} end
  lo = {start, false}
elseif query == 'between' then
  local f2, p2, e2 = position(ARGV[6], ARGV[7])
  if not (f1 and f2) then return {} end
  if not less(p2, p1) then
    if p1 == nil then return {} end
    lo, hi = {p1, e1}, p2
  else
    lo, hi, from_end = {p2, e2}, p1, true
  end
else
  return {}
end

local lo_s = cut
if lo and not less(lo[1], cut) then
  lo_s = lo[1]
  if lo[2] then lo_s = '(' .. lo_s end
end
local hi_s = '+'
if hi then hi_s = '(' .. hi end

local entries
if from_end then
  local rev = redis.call('XREVRANGE', sk, hi_s, lo_s, 'COUNT', limit)
  entries = {}
  for i = #rev, 1, -1 do entries[#entries + 1] = rev[i] end
else
  entries = redis.call('XRANGE', sk, lo_s, hi_s, 'COUNT', limit)
end
local out = {}
for _, e in ipairs(entries) do
  if (tonumber(field(e[2], 't')) or 0) >= cutoff then
    out[#out + 1] = e[2]
  end
end
return out
