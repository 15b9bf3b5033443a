-- Nodes whose heartbeat has not lapsed (at most 10000).
return redis.call('ZRANGEBYSCORE', B .. 'nodes', '(' .. now_ms(), '+inf', 'LIMIT', 0, 10000)
