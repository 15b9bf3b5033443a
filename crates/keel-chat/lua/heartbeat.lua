-- Marks a node alive until now + ttl and refreshes its clients' presence to the same expiry;
-- returns the clients that have no presence (unknown). Nodes lapsed for an hour are dropped.
-- Also keeps the node sequence at or above this node's number.
-- ARGV: node, ttl ms, client ids (at most 1000, the caller splits)
local now = now_ms()
local expiry = now + tonumber(ARGV[2])
redis.call('ZADD', B .. 'nodes', expiry, ARGV[1])
-- A Redis that lost its data (restart without persistence) must not hand this node's number
-- to a new node: keep the sequence at least at every live node's number.
local seq = tonumber(redis.call('GET', B .. 'nodeseq') or '0')
if seq < tonumber(ARGV[1]) then
  redis.call('SET', B .. 'nodeseq', ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', B .. 'nodes', '-inf', now - 3600000)
local pk = B .. 'presence'
local unknown = {}
for i = 3, #ARGV do
  local id = ARGV[i]
  if redis.call('ZSCORE', pk, id) then
    redis.call('ZADD', pk, 'XX', expiry, id)
  else
    unknown[#unknown + 1] = id
  end
end
return unknown
