//! `keel bench chat`: the chat server at scale, on several nodes and load processes.
//!
//! Scenarios (`--scenario idle,fanout,storm`):
//! - **idle**: N registered idle connections spread over K nodes (child `keel chat serve`
//!   processes) from L load processes (hidden `keel bench chat-load` children, at most
//!   `--per-load` connections each: a process here may hold 20,000 files); resident memory
//!   per connection per node (VmRSS delta / connections). Beside it, ngircd holding
//!   `--baseline-connections` in the same run.
//! - **fanout**: one message to a channel of N members spread over the nodes; p50/p99 of
//!   delivery (the send time travels in the text, the receiver subtracts it on arrival).
//! - **storm**: N clients connected, then all dropped at once (every node but node 0 is
//!   SIGKILLed and restarted; with one node the load processes cut every client); clients
//!   come back by the documented reconnect policy (`keel_chat::reconnect`). Reported: time
//!   until all are back, failed attempts, peak resident memory per node, and p99 latency of
//!   messages between `--stayers` clients on node 0, which stay connected throughout.
//!
//! Client source addresses are spread over 127.0.0.0/8 (one per connection), so ephemeral
//! ports never run out.

mod baseline;
pub mod load;
mod node;
mod scenarios;

use std::net::{Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

pub use load::{chat_load, ChatLoadArgs};

/// The runs behind the brief's chat figures, shown by `--help`.
const FIGURES: &str = "\
Nodes and load processes are child processes of this one. A process may hold 20,000 files
here, so 100,000 connections need 7 nodes (about 14,300 each) and 7 load processes
(--per-load 15000, the default). Figures of the brief (release build, Redis on
127.0.0.1:6379; the nodes use a key prefix of their own per run):

  # 100,000 idle connections, resident memory per connection per node (+ ngircd at 10,000)
  keel bench chat --scenario idle --engine redis --nodes 7 --connections 100000 --json
  # one message to a 10,000-member channel over 3 nodes, p50/p99 delivery
  keel bench chat --scenario fanout --engine redis --nodes 3 --fanout-members 10000 --json
  # 100,000 clients on nodes 1-7, all SIGKILLed and restarted at once; node 0 keeps the
  # --stayers (100), whose message p99 during the storm is the scenario's p99
  keel bench chat --scenario storm --engine redis --nodes 8 --connections 100000 --json

With --engine memory every node is a network of its own: idle and storm work the same,
fan-out uses one node.";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScenarioName {
    Idle,
    Fanout,
    Storm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchEngine {
    Redis,
    Memory,
}

impl BenchEngine {
    fn as_str(self) -> &'static str {
        match self {
            BenchEngine::Redis => "redis",
            BenchEngine::Memory => "memory",
        }
    }
}

#[derive(Debug, Args)]
#[command(after_help = FIGURES)]
pub struct ChatBenchArgs {
    /// Scenarios to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "idle")]
    pub scenario: Vec<ScenarioName>,
    /// Chat nodes (child `keel chat serve` processes).
    #[arg(long, default_value_t = 1)]
    pub nodes: usize,
    /// Engine of the nodes; `redis` makes them one network on --redis.
    #[arg(long, value_enum, default_value = "memory")]
    pub engine: BenchEngine,
    /// Redis URL passed to the nodes with --engine redis.
    #[arg(long, env = "KEEL_REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis: String,
    /// Client connections (idle and storm).
    #[arg(long, env = "KEEL_BENCH_CONNECTIONS", default_value_t = 10_000)]
    pub connections: usize,
    /// Connections per load process, at most (a process may hold 20,000 files).
    #[arg(long, default_value_t = 15_000)]
    pub per_load: usize,
    /// Registrations in flight at once per load process (initial connect).
    #[arg(long, default_value_t = 200)]
    pub concurrency: usize,
    /// Members of the fan-out channel [default: min(--connections, 10000)].
    #[arg(long)]
    pub fanout_members: Option<usize>,
    /// Messages sent to the fan-out channel, one at a time.
    #[arg(long, default_value_t = 20)]
    pub fanout_messages: u32,
    /// Fan-out: JOINs per second while the members join, spread over the load processes;
    /// 0 sends them all at once.
    #[arg(long, default_value_t = 0.0)]
    pub fanout_join_rate: f64,
    /// Pause between fan-out messages.
    #[arg(long, default_value = "500ms", value_parser = keel_core::parse_duration)]
    pub fanout_interval: Duration,
    /// Storm: clients on node 0 that stay connected and exchange messages in pairs.
    #[arg(long, default_value_t = 100)]
    pub stayers: usize,
    /// Storm: each stayer sends one message to its partner this often.
    #[arg(long, default_value = "250ms", value_parser = keel_core::parse_duration)]
    pub stay_interval: Duration,
    /// Storm: give up waiting for the clients to come back after this long.
    #[arg(long, default_value = "180s", value_parser = keel_core::parse_duration)]
    pub storm_timeout: Duration,
    /// Storm: the nodes' global accept rate per node (paced above it) [default: the
    /// server's, 1000/s with a queue of 10,000 and a 10 s deadline]; 0 turns pacing off.
    #[arg(long)]
    pub accept_rate: Option<f64>,
    /// Reconnect policy: first backoff window.
    #[arg(long, default_value = "1s", value_parser = keel_core::parse_duration)]
    pub backoff_base: Duration,
    /// Reconnect policy: largest backoff window.
    #[arg(long, default_value = "30s", value_parser = keel_core::parse_duration)]
    pub backoff_cap: Duration,
    /// Connections ngircd holds beside Keel [default: min(--connections, 10000)].
    #[arg(long)]
    pub baseline_connections: Option<usize>,
    /// The baseline IRC daemon (Debian's ngircd); skipped when not installed.
    #[arg(long, env = "KEEL_BENCH_NGIRCD", default_value = "ngircd")]
    pub ngircd: String,
    /// Skip the baseline.
    #[arg(long)]
    pub no_baseline: bool,
    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Source address for connection `i`: one address per connection from 127.1.0.1 up, so
/// neither ephemeral ports nor per-address limits get in the way.
pub(crate) fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        1 + (i / 62_500 % 200) as u8,
        (i / 250 % 250) as u8,
        1 + (i % 250) as u8,
    )
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

pub(crate) fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// Microseconds since the Unix epoch (the same clock for every process on the host).
pub(crate) fn unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

pub(crate) fn loopback(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Warns when the host's connection-tracking table cannot hold the run: each loopback
/// connection takes one netfilter conntrack entry (on hosts where Docker or a firewall loaded
/// `nf_conntrack`), entries of killed connections linger, and a full table silently drops
/// packets, which a storm run sees as connection resets and timeouts, not as a Keel failure.
pub(crate) fn conntrack_warning(count: u64, max: u64, connections: u64) -> Option<String> {
    // A storm holds the old and the new connection of a client at once: twice, plus slack.
    let needed = connections.saturating_mul(2).saturating_add(10_000);
    (max.saturating_sub(count) < needed).then(|| {
        format!(
            "warning: nf_conntrack has {} free entries ({count} of {max} used) and this run \
             needs about {needed}: the kernel will drop packets (dmesg: \"table full\"). Raise \
             it first: sysctl -w net.netfilter.nf_conntrack_max={}",
            max.saturating_sub(count),
            (count + needed).next_power_of_two()
        )
    })
}

fn read_proc_u64(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub async fn bench(args: ChatBenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(args.nodes >= 1, "--nodes must be at least 1");
    anyhow::ensure!(
        (1..=19_000).contains(&args.per_load),
        "--per-load must be 1..=19000 (a process may hold 20,000 files)"
    );
    let dir = std::env::temp_dir().join(format!("keel-bench-chat-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    if let (Some(count), Some(max)) = (
        read_proc_u64("/proc/sys/net/netfilter/nf_conntrack_count"),
        read_proc_u64("/proc/sys/net/netfilter/nf_conntrack_max"),
    ) {
        if let Some(w) = conntrack_warning(count, max, args.connections as u64) {
            eprintln!("keel bench chat: {w}");
        }
    }
    let mut report = Vec::new();
    let mut result = Ok(());
    for s in args.scenario.clone() {
        let r = match s {
            ScenarioName::Idle => scenarios::idle(&args, &dir).await,
            ScenarioName::Fanout => scenarios::fanout(&args, &dir).await,
            ScenarioName::Storm => scenarios::storm(&args, &dir).await,
        };
        match r {
            Ok(s) => report.push(s),
            Err(e) => {
                result = Err(e.context(format!("scenario {s:?}")));
                break;
            }
        }
    }
    keel_bench::print_report(&report, args.json);
    match result {
        Ok(()) if std::env::var_os("KEEL_BENCH_KEEP_LOGS").is_some() => {
            eprintln!("keel bench chat: logs kept in {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Ok(()) => {
            let _ = std::fs::remove_dir_all(&dir);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("keel bench chat: logs kept in {}", dir.display());
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::conntrack_warning;

    #[test]
    fn conntrack_warning_only_when_the_table_is_short() {
        assert!(conntrack_warning(0, 1_048_576, 100_000).is_none());
        let w = conntrack_warning(203_656, 262_144, 100_000).expect("too small a table");
        assert!(w.contains("58488 free entries"), "{w}");
        assert!(w.contains("nf_conntrack_max=524288"), "{w}");
    }
}
