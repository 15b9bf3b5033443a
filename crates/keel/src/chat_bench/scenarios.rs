//! The three scenarios: idle connections, fan-out, reconnect storm.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use keel_bench::Scenario;
use keel_chat::reconnect::Policy;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

use super::baseline;
use super::load::{merge_hist, total, LoadProc};
use super::node::{write_config, Node, NodeSpec};
use super::{source, unix_us, BenchEngine, ChatBenchArgs};

async fn start_nodes(
    args: &ChatBenchArgs,
    dir: &Path,
    name: &str,
    k: usize,
    accept_rate: Option<f64>,
) -> anyhow::Result<Vec<Node>> {
    let spec = NodeSpec {
        engine: args.engine,
        redis: args.redis.clone(),
        config: write_config(dir, name, accept_rate)?,
        dir: dir.to_owned(),
    };
    let mut nodes = Vec::with_capacity(k);
    for i in 0..k {
        nodes.push(Node::start(i, &spec).await?);
    }
    Ok(nodes)
}

fn spawn_loads(
    args: &ChatBenchArgs,
    addrs: &[SocketAddr],
    n: usize,
) -> anyhow::Result<Vec<LoadProc>> {
    let procs = n.div_ceil(args.per_load).max(1);
    let policy = Policy {
        base: args.backoff_base,
        cap: args.backoff_cap,
    };
    let mut loads = Vec::with_capacity(procs);
    let mut first = 0;
    for p in 0..procs {
        let count = n / procs + usize::from(p < n % procs);
        // Client i (global index) connects to addrs[i % K] in every process.
        loads.push(LoadProc::spawn(
            addrs,
            first,
            count,
            args.concurrency,
            policy,
        )?);
        first += count;
    }
    Ok(loads)
}

/// Connections per node, from the load processes' counts.
fn per_node(loads: &[LoadProc], k: usize) -> Vec<u64> {
    let mut out = vec![0; k];
    for l in loads {
        for (j, c) in l.per_node().iter().enumerate().take(k) {
            out[j] += c;
        }
    }
    out
}

/// Polls the load processes until `done`, printing progress; stops early when nothing
/// moved for `stall` or a load process died.
async fn wait_for(
    what: &str,
    loads: &mut [LoadProc],
    field: &str,
    want: u64,
    stall: Duration,
) -> anyhow::Result<u64> {
    let mut last = (0, Instant::now());
    let mut shown = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for l in loads.iter_mut() {
            anyhow::ensure!(l.alive(), "a load process died while {what}");
        }
        let now = total(loads, field);
        if now >= want {
            return Ok(now);
        }
        if now != last.0 {
            last = (now, Instant::now());
        } else if last.1.elapsed() > stall {
            let err = loads.iter().find_map(LoadProc::first_error);
            eprintln!(
                "keel bench chat: {what}: stalled at {now}/{want} (first error: {})",
                err.unwrap_or_default()
            );
            return Ok(now);
        }
        if shown.elapsed() > Duration::from_secs(2) {
            eprintln!("keel bench chat: {what}: {now}/{want}");
            shown = Instant::now();
        }
    }
}

/// Waits until no load process received anything for `quiet`.
async fn wait_quiet(loads: &[LoadProc], quiet: Duration, limit: Duration) {
    let started = Instant::now();
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let last = loads.iter().map(|l| l.get("last_rx_us")).max().unwrap_or(0);
        if unix_us().saturating_sub(last) > quiet.as_micros() as u64 {
            return;
        }
    }
}

async fn merged(
    loads: &mut [LoadProc],
    field: &str,
) -> anyhow::Result<(Histogram<u64>, Vec<Value>)> {
    let mut h = keel_bench::report::histogram();
    let mut reports = Vec::new();
    for l in loads.iter_mut() {
        let r = l.report().await?;
        merge_hist(&mut h, &r[field]);
        reports.push(r);
    }
    Ok((h, reports))
}

// ---- idle -------------------------------------------------------------------------------

pub async fn idle(args: &ChatBenchArgs, dir: &Path) -> anyhow::Result<Scenario> {
    let k = args.nodes;
    let n = args.connections;
    let mut nodes = start_nodes(args, dir, "idle", k, Some(0.0)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before: Vec<u64> = nodes.iter().map(Node::rss).collect::<Result<_, _>>()?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let started = Instant::now();
    let mut loads = spawn_loads(args, &addrs, n)?;
    let registered = wait_for(
        "registering idle clients",
        &mut loads,
        "registered",
        n as u64,
        Duration::from_secs(30),
    )
    .await?;
    let elapsed = started.elapsed();
    // Let the nodes settle (welcome bursts written, buffers released), then measure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after: Vec<u64> = nodes.iter().map(Node::rss).collect::<Result<_, _>>()?;
    let conns = per_node(&loads, k);
    let (reg_hist, _) = merged(&mut loads, "reg_latency").await?;
    for node in &mut nodes {
        anyhow::ensure!(node.alive(), "node {} died", node.index);
    }
    drop(loads);
    drop(nodes);

    let mut per = Vec::new();
    let mut worst = 0f64;
    for i in 0..k {
        let delta = after[i].saturating_sub(before[i]);
        let bpc = delta as f64 / conns[i].max(1) as f64;
        worst = worst.max(bpc);
        per.push(
            json!({"node": i, "connections": conns[i], "rss_before_bytes": before[i],
            "rss_after_bytes": after[i], "rss_bytes_per_conn": bpc.round()}),
        );
    }
    let delta_all: u64 = (0..k).map(|i| after[i].saturating_sub(before[i])).sum();
    let mean = delta_all as f64 / registered.max(1) as f64;
    let mut s = Scenario::new("chat_idle_connections", registered, elapsed, &reg_hist)
        .with("engine", args.engine.as_str())
        .with("nodes", k as u64)
        .with("load_processes", n.div_ceil(args.per_load) as u64)
        .with("connections", registered)
        .with("rss_bytes_per_conn", mean.round())
        .with("rss_bytes_per_conn_worst_node", worst.round())
        .with("per_node", Value::Array(per));
    if !args.json {
        eprintln!(
            "keel: {registered} idle connections on {k} node(s): {mean:.0} bytes resident per connection (worst node {worst:.0})"
        );
    }
    if !args.no_baseline {
        match baseline::which(&args.ngircd) {
            None => eprintln!("keel bench chat: {} not found; no baseline", args.ngircd),
            Some(program) => {
                let nb = args
                    .baseline_connections
                    .unwrap_or(n.min(10_000))
                    .min(15_000);
                let b = baseline::run_ngircd(nb, args.concurrency, &program, dir).await?;
                if !args.json {
                    eprintln!(
                        "ngircd: {} idle connections: {:.0} bytes resident per connection",
                        b.registered,
                        b.per_conn()
                    );
                }
                s = s
                    .with_baseline(
                        "ngircd",
                        b.registered as f64 / b.elapsed.as_secs_f64().max(1e-9),
                    )
                    .with("baseline_connections", b.registered as u64)
                    .with("baseline_rss_bytes_per_conn", b.per_conn().round());
            }
        }
    }
    Ok(s)
}

// ---- fan-out ----------------------------------------------------------------------------

/// A registered client driven by the parent; its reader answers PINGs and discards the rest.
async fn parent_client(addr: SocketAddr, index: usize, nick: &str) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((source(index), 0)))?;
    let mut stream = socket.connect(addr).await?;
    stream
        .write_all(format!("NICK {nick}\r\nUSER {nick} 0 * :bench\r\n").as_bytes())
        .await?;
    let mut reader = BufReader::new(&mut stream);
    let mut line = String::new();
    loop {
        line.clear();
        anyhow::ensure!(
            reader.read_line(&mut line).await? > 0,
            "{nick}: closed during registration"
        );
        let code = line.split(' ').nth(1).unwrap_or("");
        if code == "376" || code == "422" {
            break;
        }
        anyhow::ensure!(
            !line.starts_with("ERROR") && code != "433",
            "{nick}: {}",
            line.trim_end()
        );
    }
    Ok(stream)
}

pub async fn fanout(args: &ChatBenchArgs, dir: &Path) -> anyhow::Result<Scenario> {
    let k = match args.engine {
        BenchEngine::Redis => args.nodes,
        BenchEngine::Memory => {
            if args.nodes > 1 {
                eprintln!("keel bench chat: fan-out across nodes needs --engine redis; using one memory node");
            }
            1
        }
    };
    let members = args.fanout_members.unwrap_or(args.connections.min(10_000));
    let nodes = start_nodes(args, dir, "fanout", k, Some(0.0)).await?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    let mut loads = spawn_loads(args, &addrs, members)?;
    let registered = wait_for(
        "registering members",
        &mut loads,
        "registered",
        members as u64,
        Duration::from_secs(30),
    )
    .await?;
    let channel = "#fan";
    let join_started = Instant::now();
    let loads_n = loads.len().max(1);
    for l in loads.iter_mut() {
        // Paced: each member's JOIN goes to every member (O(N²) lines in all), so all at
        // once would bury the members' sockets; the rate is split over the load processes.
        let rate = args.fanout_join_rate / loads_n as f64;
        l.command(json!({"cmd": "join", "channel": channel, "rate": rate}))
            .await?;
    }
    let joined = wait_for(
        "joining the channel",
        &mut loads,
        "joined",
        registered,
        // 20 s without progress, plus the paced joins' own duration (none when all at once).
        Duration::from_secs(20)
            + if args.fanout_join_rate > 0.0 {
                Duration::from_secs_f64(registered as f64 / args.fanout_join_rate)
            } else {
                Duration::ZERO
            },
    )
    .await?;
    wait_quiet(&loads, Duration::from_secs(1), Duration::from_secs(600)).await;
    // `wait_for` returns when the count reaches the goal or stops moving for a while; the
    // JOIN echoes of the last joiners can arrive after that (behind the other members' JOINs
    // in their sockets), so the count is read again once the channel is quiet.
    let joined = joined.max(total(&loads, "joined"));
    let join_failed = total(&loads, "join_failed");
    let disconnects = total(&loads, "disconnects");
    if disconnects > 0 {
        let why = loads.iter().find_map(|l| {
            l.status.lock()["first_disconnect"]
                .as_str()
                .map(str::to_owned)
        });
        eprintln!(
            "keel bench chat: {disconnects} member connection(s) ended while joining (first: {})",
            why.unwrap_or_default()
        );
    }
    let join_elapsed = join_started.elapsed();

    // The sender: one more member, on node 0.
    let sender = parent_client(addrs[0], 5_000_000, "fansender").await?;
    let (r, mut w) = sender.into_split();
    w.write_all(format!("JOIN {channel}\r\n").as_bytes())
        .await?;
    // Reads (and drops) what the sender receives; keeps why it was closed, if it was.
    let closed: Arc<Mutex<Option<String>>> = Arc::default();
    let drain = tokio::spawn({
        let closed = closed.clone();
        async move {
            let mut lines = BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if line.starts_with("ERROR") {
                    *closed.lock() = Some(line);
                }
            }
        }
    });
    wait_quiet(&loads, Duration::from_secs(1), Duration::from_secs(60)).await;
    for seq in 0..args.fanout_messages {
        let line = format!("PRIVMSG {channel} :fan {seq} {}\r\n", unix_us());
        if let Err(e) = w.write_all(line.as_bytes()).await {
            anyhow::bail!(
                "the fan-out sender lost its connection: {e} ({})",
                closed.lock().clone().unwrap_or_default()
            );
        }
        tokio::time::sleep(args.fanout_interval).await;
    }
    wait_quiet(&loads, Duration::from_secs(1), Duration::from_secs(60)).await;
    let (hist, reports) = merged(&mut loads, "fan_latency").await?;
    drain.abort();
    let mut fan_max: Vec<u64> = Vec::new();
    for r in &reports {
        for (i, v) in r["fan_max"].as_array().into_iter().flatten().enumerate() {
            if fan_max.len() <= i {
                fan_max.resize(i + 1, 0);
            }
            fan_max[i] = fan_max[i].max(v.as_u64().unwrap_or(0));
        }
    }
    let deliveries = hist.len();
    // Every registered member was told to join; `joined` counts the JOIN echoes seen.
    let expected = registered * u64::from(args.fanout_messages);
    let busy = Duration::from_micros(fan_max.iter().sum::<u64>().max(1));
    drop(loads);
    drop(nodes);
    Ok(
        Scenario::new("chat_fanout_delivery", deliveries, busy, &hist)
            .with("engine", args.engine.as_str())
            .with("nodes", k as u64)
            .with("members", registered)
            .with("join_echoes_seen", joined)
            .with("join_failures", join_failed)
            .with("member_disconnects", disconnects)
            .with("join_phase_ms", join_elapsed.as_millis() as u64)
            .with("join_rate_per_sec", args.fanout_join_rate)
            .with(
                "message_spacing_ms",
                args.fanout_interval.as_millis() as u64,
            )
            .with(
                "messages_overlapping_next",
                fan_max
                    .iter()
                    .filter(|m| **m >= args.fanout_interval.as_micros() as u64)
                    .count() as u64,
            )
            .with("messages", u64::from(args.fanout_messages))
            .with("deliveries_expected", expected)
            .with("deliveries_missing", expected.saturating_sub(deliveries))
            .with("max_us", hist.max())
            .with("last_delivery_us_per_message", json!(fan_max))
            .with(
                "mean_last_delivery_us",
                (busy.as_micros() as u64) / (fan_max.len().max(1) as u64),
            ),
    )
}

// ---- storm ------------------------------------------------------------------------------

/// Latencies of the stayers' messages by phase: 0 before the storm, 1 during, 2 after.
struct StayStats {
    phase: AtomicU8,
    hist: [Mutex<Histogram<u64>>; 3],
    drops: AtomicU64,
    sent: AtomicU64,
}

async fn stayer(
    addr: SocketAddr,
    index: usize,
    j: usize,
    partner: usize,
    interval: Duration,
    stats: Arc<StayStats>,
    stop: tokio_util_stop::Stop,
) -> anyhow::Result<()> {
    let stream = parent_client(addr, index, &format!("st{j}")).await?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let offset = Duration::from_micros(rand::random::<u64>() % interval.as_micros().max(1) as u64);
    let mut tick = tokio::time::interval_at(Instant::now() + offset, interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.wait() => return Ok(()),
            _ = tick.tick() => {
                let line = format!("PRIVMSG st{partner} :lat {}\r\n", unix_us());
                w.write_all(line.as_bytes()).await?;
                stats.sent.fetch_add(1, Ordering::Relaxed);
            }
            line = lines.next_line() => {
                let Some(line) = line? else {
                    stats.drops.fetch_add(1, Ordering::Relaxed);
                    anyhow::bail!("stayer st{j} was disconnected");
                };
                if let Some(token) = line.strip_prefix("PING ") {
                    w.write_all(format!("PONG {token}\r\n").as_bytes()).await?;
                } else if let Some(sent) = line
                    .split_once(" PRIVMSG ")
                    .and_then(|(_, rest)| rest.split_once(" :lat "))
                    .and_then(|(_, ts)| ts.trim().parse::<u64>().ok())
                {
                    let lat = unix_us().saturating_sub(sent).clamp(1, 60_000_000);
                    let phase = usize::from(stats.phase.load(Ordering::Relaxed).min(2));
                    let _ = stats.hist[phase].lock().record(lat);
                }
            }
        }
    }
}

/// A stop signal for the stayers (a watch channel).
mod tokio_util_stop {
    #[derive(Clone)]
    pub struct Stop(pub tokio::sync::watch::Receiver<bool>);
    impl Stop {
        pub async fn wait(&self) {
            let mut rx = self.0.clone();
            let _ = rx.wait_for(|v| *v).await;
        }
    }
}

pub async fn storm(args: &ChatBenchArgs, dir: &Path) -> anyhow::Result<Scenario> {
    let k = args.nodes;
    let n = args.connections;
    let kill_mode = k >= 2;
    let mut nodes = start_nodes(args, dir, "storm", k, args.accept_rate).await?;
    let addrs: Vec<SocketAddr> = nodes.iter().map(|n| n.addr).collect();
    // Node 0 keeps the stayers and is never killed; the storm clients are on the others.
    let storm_addrs = if kill_mode { &addrs[1..] } else { &addrs[..] };
    let mut loads = spawn_loads(args, storm_addrs, n)?;
    let registered = wait_for(
        "connecting storm clients",
        &mut loads,
        "registered",
        n as u64,
        Duration::from_secs(30),
    )
    .await?;

    let stats = Arc::new(StayStats {
        phase: AtomicU8::new(0),
        hist: std::array::from_fn(|_| Mutex::new(keel_bench::report::histogram())),
        drops: AtomicU64::new(0),
        sent: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut stay_tasks = tokio::task::JoinSet::new();
    let stayers = args.stayers.max(2) & !1;
    for j in 0..stayers {
        stay_tasks.spawn(stayer(
            addrs[0],
            6_000_000 + j,
            j,
            j ^ 1,
            args.stay_interval,
            stats.clone(),
            tokio_util_stop::Stop(stop_rx.clone()),
        ));
    }
    // Before the storm: a baseline of the stayers' latency.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let failed_before = total(&loads, "failed_attempts");
    let hinted_before = total(&loads, "refused_with_hint");
    let disconnects_before = total(&loads, "disconnects");

    stats.phase.store(1, Ordering::Relaxed);
    let t0 = unix_us();
    let started = Instant::now();
    let mut peak = vec![0u64; k];
    if kill_mode {
        eprintln!(
            "keel bench chat: storm: SIGKILL {} node(s) holding {registered} clients",
            k - 1
        );
        for node in nodes[1..].iter_mut() {
            node.kill().await?;
        }
        // All at once, as an orchestrator restarting crashed replicas would.
        for node in nodes[1..].iter_mut() {
            node.respawn()?;
        }
        for node in nodes[1..].iter_mut() {
            node.wait_listening().await?;
        }
    } else {
        eprintln!("keel bench chat: storm: cutting {registered} clients at once");
        for l in loads.iter_mut() {
            l.command(json!({"cmd": "cut"})).await?;
        }
    }
    let mut shown = Instant::now();
    let all_back = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        for (i, node) in nodes.iter().enumerate() {
            if let Ok(r) = node.rss() {
                peak[i] = peak[i].max(r);
            }
        }
        let gone = total(&loads, "disconnects") - disconnects_before;
        let back = total(&loads, "registered");
        if gone >= registered && back >= registered {
            break true;
        }
        if started.elapsed() > args.storm_timeout {
            break false;
        }
        if shown.elapsed() > Duration::from_secs(2) {
            eprintln!("keel bench chat: storm: {back}/{registered} back ({gone} dropped)");
            shown = Instant::now();
        }
        for l in loads.iter_mut() {
            anyhow::ensure!(l.alive(), "a load process died during the storm");
        }
    };
    let last = loads
        .iter()
        .map(|l| l.get("last_registered_us"))
        .max()
        .unwrap_or(t0);
    let back_after = Duration::from_micros(last.saturating_sub(t0));
    stats.phase.store(2, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _ = stop_tx.send(true);
    let mut stayer_errors = 0u64;
    while let Some(r) = stay_tasks.join_next().await {
        if !matches!(r, Ok(Ok(()))) {
            stayer_errors += 1;
        }
    }
    let mut crashed = 0u64;
    for node in &mut nodes {
        if !node.alive() {
            crashed += 1;
        }
    }
    let failed = total(&loads, "failed_attempts") - failed_before;
    let hinted = total(&loads, "refused_with_hint") - hinted_before;
    let back = total(&loads, "registered");
    let first_error = loads.iter().find_map(LoadProc::first_error);
    drop(loads);
    drop(nodes);

    let during = stats.hist[1].lock().clone();
    let before = stats.hist[0].lock().clone();
    Ok(Scenario::new(
        "chat_reconnect_storm",
        back.min(registered),
        back_after,
        &during,
    )
    .with("engine", args.engine.as_str())
    .with("nodes", k as u64)
    .with(
        "mode",
        if kill_mode {
            "kill_nodes"
        } else {
            "cut_clients"
        },
    )
    .with("clients", registered)
    .with("all_back", all_back)
    .with("back_within_s", back_after.as_secs_f64())
    .with("failed_attempts", failed)
    .with("refused_with_hint", hinted)
    .with("first_failure", first_error.unwrap_or_default())
    .with("nodes_crashed", crashed)
    .with("peak_rss_bytes_per_node", json!(peak))
    .with("stayers", stayers as u64)
    .with("stayer_messages_in_storm", during.len())
    .with("stayer_p99_before_us", before.value_at_quantile(0.99))
    .with("stayer_max_in_storm_us", during.max())
    .with(
        "stayer_disconnects",
        stats.drops.load(Ordering::Relaxed).max(stayer_errors),
    )
    .with(
        "accept_rate_per_node",
        args.accept_rate
            .unwrap_or(keel_chat::Limits::default().accepts_per_sec),
    ))
}
