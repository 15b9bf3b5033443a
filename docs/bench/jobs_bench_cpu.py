# One interleavable run of 'keel bench jobs' with the Redis-side and client CPU per job of the Keel phase
# (docs/bench/jobs.md, jobs-4). usage: python3 jobs_bench_cpu.py LABEL KEEL_BINARY PORT   (private redis-server: FLUSHALL)
# Prints a markdown row: jobs/s, baseline, ratio, enqueue/s, p50/p99, EVALSHA us/job, client and redis CPU us/job, load.
import subprocess, sys, time, json, os, re
label, binary, port = sys.argv[1], sys.argv[2], sys.argv[3]
def cli(*a): return subprocess.run(['redis-cli', '-p', port, *a], capture_output=True, text=True).stdout
cli('FLUSHALL'); cli('CONFIG', 'RESETSTAT')
rpid = int(re.search(r'process_id:(\d+)', cli('INFO', 'server')).group(1))
tck = os.sysconf('SC_CLK_TCK')
def cpu(pid):
    try:
        st = open(f'/proc/{pid}/stat').read().rsplit(')', 1)[1].split()
        return (int(st[11]) + int(st[12])) / tck
    except Exception: return None
def evalsha():
    m = re.search(r'cmdstat_evalsha:calls=(\d+),usec=(\d+)', cli('INFO', 'commandstats'))
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)
load = open('/proc/loadavg').read().split()[0]
p = subprocess.Popen([binary, 'bench', 'jobs', '--redis', f'redis://127.0.0.1:{port}', '--jobs', '200000', '--workers', '4', '--json'], stdout=subprocess.PIPE, text=True)
start = None; last = None
while p.poll() is None:
    c, u = evalsha()
    if c > 5 and start is None:
        start = (cpu(p.pid), cpu(rpid))
    if start is not None:
        v = (cpu(p.pid), cpu(rpid))
        if v[0] is not None: last = v
    time.sleep(0.02)
out = json.loads(p.stdout.read())
k, b = out[0], out[1]
c, u = evalsha()
jobs = 200000
cc = (last[0] - start[0]) * 1e6 / jobs if start and last else float('nan')
rc = (last[1] - start[1]) * 1e6 / jobs if start and last else float('nan')
print(f"| {label} | {k['ops_per_sec']:,.0f} | {b['ops_per_sec']:,.0f} | {k['ops_per_sec']/b['ops_per_sec']:.2f}x | {k['enqueue_per_sec']:,.0f} | {k['p50_us']/1000:.1f} / {k['p99_us']/1000:.1f} ms | {u/jobs:.2f} | {cc:.2f} | {rc:.2f} | {load} |", flush=True)
