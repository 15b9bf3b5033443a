-- Appends a message to one conversation's history: a stream `s` whose ids follow the
-- messages' times (unix ms, never going back), and a hash `ids` of msgid -> stream id.
-- Trims entries older than the message's time minus the age, then down to the count bound,
-- at most 100 removals of each kind per call; both keys expire when the conversation idles.
-- KEYS[1] = conversation base `prefix:{h:KEY}:`
-- ARGV: max count, age ms, time ms, msgid, then the entry's field/value pairs (bounded by
-- the caller: fixed fields and at most 32 client tags)
local sk, ik = KEYS[1] .. 's', KEYS[1] .. 'ids'
local max, age, time, msgid = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local fields = {}
for i = 5, #ARGV do
  fields[#fields + 1] = ARGV[i]
end

local ms = time
local last = redis.call('XREVRANGE', sk, '+', '-', 'COUNT', 1)
if last[1] then
  local lm = tonumber(string.match(last[1][1], '^(%d+)'))
  if lm and lm > ms then ms = lm end
end
local id = redis.pcall('XADD', sk, string.format('%d', ms) .. '-*', unpack(fields))
if type(id) == 'table' and id.err then
  -- The stream's last id is ahead of its last entry (entries deleted): let Redis pick.
  id = redis.call('XADD', sk, '*', unpack(fields))
end
redis.call('HSET', ik, msgid, id)

local function msgid_of(entry)
  local f = entry[2]
  for i = 1, #f, 2 do
    if f[i] == 'm' then return f[i + 1] end
  end
  return nil
end

local function drop(entries)
  for _, e in ipairs(entries) do
    local m = msgid_of(e)
    if m and redis.call('HGET', ik, m) == e[1] then
      redis.call('HDEL', ik, m)
    end
    redis.call('XDEL', sk, e[1])
  end
end

local cutoff = time - age
if cutoff > 0 then
  drop(redis.call('XRANGE', sk, '-', '(' .. string.format('%d', cutoff) .. '-0', 'COUNT', 100))
end
local excess = redis.call('XLEN', sk) - max
if excess > 0 then
  drop(redis.call('XRANGE', sk, '-', '+', 'COUNT', math.min(excess, 100)))
end
redis.call('PEXPIRE', sk, age)
redis.call('PEXPIRE', ik, age)
return id
