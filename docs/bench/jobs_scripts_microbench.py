# Micro-benchmark of the job scripts: Redis-side time per job of enqueue, fetch, complete
# (slowlog durations), driven over a raw RESP socket (no client library needed).
# usage: PORT=16421 python3 jobs_scripts_microbench.py crates/keel-jobs/lua [rounds]
# (also prints redis-server's CPU time per job from /proc/PID/stat: run it on the same host;
# SLOW=N sets slowlog-log-slower-than, default 0)
# WARNING: it runs FLUSHALL and changes slowlog settings: point it at a private redis-server only.
# To see what one call costs, copy the lua folder, comment that call out, and compare.
import socket, sys, random, hashlib, json, os
LUA = sys.argv[1]; ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 100
PORT = int(os.environ.get('PORT', '16421'))
s = socket.create_connection(('127.0.0.1', PORT)); f = s.makefile('rb')
def enc(*args):
    out = [b'*%d\r\n' % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b'$%d\r\n%s\r\n' % (len(a), a))
    return b''.join(out)
def read():
    line = f.readline()
    t, rest = line[:1], line[1:-2]
    if t == b'+': return rest.decode()
    if t == b'-': raise Exception(rest.decode())
    if t == b':': return int(rest)
    if t == b'$':
        n = int(rest)
        if n < 0: return None
        d = f.read(n + 2)[:-2]; return d.decode(errors='replace')
    if t == b'*':
        n = int(rest)
        if n < 0: return None
        return [read() for _ in range(n)]
    raise Exception(line)
def call(*args):
    s.sendall(enc(*args)); return read()
def src(name):
    body = open(f'{LUA}/{name}.lua').read()
    if name in ('complete', 'reap', 'release', 'cancel', 'fetch') and os.path.exists(f'{LUA}/compact.lua'):
        body = open(f'{LUA}/compact.lua').read() + body
    return body
shas = {n: call('SCRIPT', 'LOAD', src(n)) for n in ('enqueue', 'fetch', 'complete')}
call('FLUSHALL'); call('CONFIG', 'SET', 'slowlog-log-slower-than', os.environ.get('SLOW','0')); call('CONFIG', 'SET', 'slowlog-max-len', '100000'); call('SLOWLOG', 'RESET')
C = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
base = 'lb:{q:bench}:'
compact = os.path.exists(f'{LUA}/compact.lua')
# Scripts that take runs of jobs and acks (a count, then the run; see enqueue.lua, complete.lua).
runs = 'runs of' in open(f'{LUA}/enqueue.lua').read()
# Chunks (an enqueue run of compact jobs is one chunk: priority, chunk id, retention, records).
chunks = 'a chunk of c compact jobs' in open(f'{LUA}/enqueue.lua').read()
def code(i): return C[i // 32] + C[i % 32]
B = 500
pid = [l for l in call('INFO','server').split('\r\n') if l.startswith('process_id:')][0].split(':')[1]
def cpu():
    st = open(f'/proc/{pid}/stat').read().rsplit(')',1)[1].split()
    return (int(st[11]) + int(st[12])) / os.sysconf('SC_CLK_TCK')
c0 = cpu()
for r in range(ROUNDS):
    args = [B] + ([B, 0] if runs else [])
    if chunks:
        chunk = ''.join(random.choice(C) for _ in range(24))
        recs = ['3|' + json.dumps({"k": "noop", "d": {"t": 1764100000000000 + j}, "m": 3, "t": 300000}, separators=(',', ':')) for j in range(B)]
        args = [B, B, 0, chunk, 60000, '\n'.join(recs)]
    for j in (range(0) if chunks else range(B)):
        i = ''.join(random.choice(C) for _ in range(26))
        spec = json.dumps({"k": "noop", "d": {"t": 1764100000000000 + j}, "m": 3, "t": 300000}, separators=(',', ':'))
        if runs: args += [i, '0|3|' + spec]
        elif compact: args += [i, '0', '', '0|3|' + spec]
        else: args += [i, spec, '0', '3', '', '0', '-1']
    call('EVALSHA', shas['enqueue'], 1, base, *args)
    for k in range(2):
        got = call('EVALSHA', shas['fetch'], 1, base, 'bench-0', 250, 30000, 250)
        els = got[1:]
        acks = [60000, 600000, 1000] + ([len(els)] if runs else [])
        ids = []
        for e in els:
            if e.startswith('#'):
                ch, lo, _c, _p, _n, mask, recs = e[1:].split('|', 6)
                for i, _r in enumerate(recs.split('\n')):
                    if not mask or mask[i] != 'x': ids.append((ch + code(int(lo) + i), '1'))
            elif e.startswith('*'): ids.append((e[1:].split('|')[0], '1'))
            else:
                p = e.split('|'); ids.append((p[0], str(int(p[1]) + 1)))
        if runs: acks[3] = len(ids)
        for idv, att in ids:
            if runs: acks += [idv + '|' + att]
            elif compact: acks += [idv, att, 'o']
            else: acks += [idv, att, 'ok', '']
        call('EVALSHA', shas['complete'], 1, base, *acks)
c1 = cpu()
log = call('SLOWLOG', 'GET', 1000000)
tot = {}
for e in log:
    a = e[3]
    if a[0].lower() != 'evalsha': continue
    name = [n for n, h in shas.items() if h == a[1]][0]
    tot[name] = tot.get(name, 0) + e[2]
jobs = ROUNDS * B
print(' '.join(f'{n}={tot.get(n,0)/jobs:.2f}' for n in ('enqueue', 'fetch', 'complete')), f'total={sum(tot.values())/jobs:.2f} us/job', f'redis_cpu={(c1-c0)*1e6/jobs:.2f} us/job')
