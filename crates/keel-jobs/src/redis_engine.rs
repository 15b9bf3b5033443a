//! The Redis engine: one Lua script per state transition, keys hash-tagged per queue.
//!
//! Layout under `prefix:{q:NAME}:` (one Redis Cluster slot per queue):
//! `ck:C` (hash per chunk: the compact jobs, i.e. enqueued ready at once without a unique key,
//! of one enqueue run share it, with their records in one field and ids `C` + index; see
//! `lua/compact.lua`; it expires after the retention once every job succeeded or left it),
//! `pieces` (hash chunk id → its live leased pieces `lo,count,#token,token`; the stats field
//! `crun` counts the chunk jobs running), `cq` (hash priority → jobs queued in chunk elements
//! beyond one per element), `jobs` (hash:
//! compact jobs written before chunks), `fin` (hash: the finish
//! time and result of every succeeded job still retained), `job:ID` (hash per job for the
//! rare paths: delayed, unique, retrying, dead, cancelled, handed back, re-queued),
//! `ready:P` (list per priority of elements: `#C|lo|count|offset` for the jobs of a chunk still
//! queued, the whole job for others, so that a fetch reads one hash per chunk; `stale` counts elements a cancel left behind), `prios` (zset of non-empty priorities),
//! `scheduled` (zset by run-at), leases per fetch batch (`held`: hash `id|attempt` → batch
//! token, `leases`: zset of tokens by expiry, `batch:TOKEN`: list of the batch's members for the
//! reaper, `bcount`: hash token → members still held, `bseq`: token counter; `inflight`, a zset
//! of `id|attempt` by expiry, holds leases written before batch leases), `dead` (zset
//! by death time), `recent` (capped list of dead and cancelled ids), `done` (list of
//! `expiry` + `id,id,...` of the jobs each ack call succeeded, forgotten by `complete.lua` and
//! `reap.lua` in bounded steps),
//! `uniq:KEY`, `stats` and `cfg` (hashes).
//! Global keys: `prefix:queues` (set), `prefix:workers` (zset) + `prefix:worker:ID`,
//! `prefix:schedules` (hash), and `prefix:{cron}:…` for leader election and fire dedup.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use keel_redis::redis::{self, aio::ConnectionManager};
use keel_redis::{LuaScript, RedisHandle};
use parking_lot::Mutex;

use crate::engine::{Engine, EngineConfig, EngineError, EngineResult, ListFilter};
use crate::model::{
    new_id, now_ms, valid_id, validate_queue_name, Completion, Enqueued, Job, JobSpec, JobState,
    Lease, Outcome, QueueLimits, QueueStats, Schedule, StoredSpec, StoredSpecRef, WorkerInfo,
};

/// Largest batch one script call handles; callers' batches are split.
pub const MAX_BATCH: usize = 500;

/// Most jobs in one chunk: a chunk job's index is 2 Crockford characters (see `lua/compact.lua`).
const CHUNK_MAX: usize = 1024;

/// A chunk takes no more jobs once its records reach this size, so that a fetch or a read of
/// one job never copies more than about this much (payloads can be large).
const CHUNK_MAX_BYTES: usize = 1 << 20;

/// The id of job `index` of chunk `chunk` (24 characters): the chunk id and the index in 2
/// Crockford characters, so that the whole is a ULID.
fn chunk_job_id(chunk: &str, index: usize) -> String {
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let mut id = String::with_capacity(26);
    id.push_str(chunk);
    id.push(CROCKFORD[(index >> 5) & 31] as char);
    id.push(CROCKFORD[index & 31] as char);
    id
}

/// A chunk's records as its argument (emptying `blob` for the next chunk).
fn blob_string(blob: &mut Vec<u8>) -> EngineResult<String> {
    String::from_utf8(std::mem::take(blob)).map_err(|e| EngineError::Invalid(e.to_string()))
}

/// The compact record `*id|created|priority|max_attempts|spec` of job `index` of a chunk, from
/// the chunk's header `created|priority|count` and records (see `lua/compact.lua`).
fn chunk_job_record(id: &str, header: &str, records: &str, index: usize) -> Option<String> {
    let mut parts = header.splitn(3, '|');
    let (created, priority) = (parts.next()?, parts.next()?);
    let record = records.split('\n').nth(index)?;
    Some(format!("*{id}|{created}|{priority}|{record}"))
}

/// The chunk and job indexes of a ready list element `#C|lo|count|offset`; None for others.
fn chunk_element_ids(element: &str) -> Option<(&str, std::ops::Range<usize>)> {
    let mut parts = element.strip_prefix('#')?.splitn(4, '|');
    let chunk = parts.next()?;
    let lo: usize = parts.next()?.parse().ok()?;
    let count: usize = parts.next()?.parse().ok()?;
    Some((chunk, lo..lo.saturating_add(count).min(CHUNK_MAX)))
}

/// The (lo, count) of each live piece of a chunk's `pieces` entry (see [`piece_token`]).
fn piece_ranges(pieces: &str) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut rest = pieces;
    while !rest.is_empty() {
        let mut parts = rest.splitn(4, ',');
        let (Some(lo), Some(count), Some(len), Some(tail)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            break;
        };
        let (Ok(lo), Ok(count), Ok(len)) = (lo.parse(), count.parse(), len.parse::<usize>()) else {
            break;
        };
        out.push((lo, count));
        match tail.get(len..) {
            Some(next) => rest = next,
            None => break,
        }
    }
    out
}

/// The batch token of the live piece holding job `index`, from a chunk's `pieces` entry
/// (`lo,count,#token,token` repeated, see `lua/compact.lua`).
fn piece_token(pieces: &str, index: usize) -> Option<&str> {
    let mut rest = pieces;
    while !rest.is_empty() {
        let mut parts = rest.splitn(4, ',');
        let lo: usize = parts.next()?.parse().ok()?;
        let count: usize = parts.next()?.parse().ok()?;
        let len: usize = parts.next()?.parse().ok()?;
        let tail = parts.next()?;
        let token = tail.get(..len)?;
        if (lo..lo.saturating_add(count)).contains(&index) {
            return Some(token);
        }
        rest = tail.get(len..)?;
    }
    None
}

/// The chunk id and index of a job id (any ULID parses; its chunk may not exist).
fn chunk_index(id: &str) -> Option<(&str, usize)> {
    const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    if id.len() != 26 || !id.is_ascii() {
        return None;
    }
    let digit = |b: u8| CROCKFORD.iter().position(|&c| c == b);
    let bytes = id.as_bytes();
    Some((&id[..24], digit(bytes[24])? * 32 + digit(bytes[25])?))
}

/// Largest ack batch one `complete.lua` call handles.
pub const MAX_ACK_BATCH: usize = 1000;

struct Scripts {
    enqueue: LuaScript,
    fetch: LuaScript,
    heartbeat: LuaScript,
    complete: LuaScript,
    release: LuaScript,
    promote: LuaScript,
    reap: LuaScript,
    cancel: LuaScript,
    retry: LuaScript,
    stats: LuaScript,
    leader: LuaScript,
    fire: LuaScript,
    resign: LuaScript,
}

impl Scripts {
    fn new() -> Self {
        Self {
            enqueue: LuaScript::new("jobs_enqueue", include_str!("../lua/enqueue.lua")),
            fetch: LuaScript::new(
                "jobs_fetch",
                concat!(
                    include_str!("../lua/compact.lua"),
                    include_str!("../lua/fetch.lua")
                ),
            ),
            heartbeat: LuaScript::new(
                "jobs_heartbeat",
                concat!(
                    include_str!("../lua/compact.lua"),
                    include_str!("../lua/heartbeat.lua")
                ),
            ),
            complete: LuaScript::new(
                "jobs_complete",
                concat!(
                    include_str!("../lua/compact.lua"),
                    include_str!("../lua/complete.lua")
                ),
            ),
            release: LuaScript::new(
                "jobs_release",
                concat!(
                    include_str!("../lua/compact.lua"),
                    include_str!("../lua/release.lua")
                ),
            ),
            promote: LuaScript::new("jobs_promote", include_str!("../lua/promote.lua")),
            reap: LuaScript::new(
                "jobs_reap",
                concat!(
                    include_str!("../lua/compact.lua"),
                    include_str!("../lua/reap.lua")
                ),
            ),
            cancel: LuaScript::new(
                "jobs_cancel",
                concat!(
                    include_str!("../lua/compact.lua"),
                    include_str!("../lua/cancel.lua")
                ),
            ),
            retry: LuaScript::new(
                "jobs_retry",
                concat!(
                    include_str!("../lua/compact.lua"),
                    include_str!("../lua/retry.lua")
                ),
            ),
            stats: LuaScript::new("jobs_stats", include_str!("../lua/stats.lua")),
            leader: LuaScript::new("jobs_leader", include_str!("../lua/leader.lua")),
            fire: LuaScript::new("jobs_fire", include_str!("../lua/fire.lua")),
            resign: LuaScript::new("jobs_resign", include_str!("../lua/resign.lua")),
        }
    }

    fn all(&self) -> [&LuaScript; 13] {
        [
            &self.enqueue,
            &self.fetch,
            &self.heartbeat,
            &self.complete,
            &self.release,
            &self.promote,
            &self.reap,
            &self.cancel,
            &self.retry,
            &self.stats,
            &self.leader,
            &self.fire,
            &self.resign,
        ]
    }
}

/// The Redis engine.
pub struct RedisEngine {
    redis: RedisHandle,
    scripts: Scripts,
    config: EngineConfig,
    known_queues: Mutex<HashSet<String>>,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

impl RedisEngine {
    /// An engine on `redis` (scripts are loaded lazily, on first NOSCRIPT).
    pub fn new(redis: RedisHandle, config: EngineConfig) -> Self {
        Self {
            redis,
            scripts: Scripts::new(),
            config,
            known_queues: Mutex::new(HashSet::new()),
        }
    }

    /// Loads every script (optional: a call that meets NOSCRIPT loads its script).
    pub async fn load_scripts(&self) -> EngineResult<()> {
        let mut conn = self.redis.connection();
        for script in self.scripts.all() {
            self.redis.with_timeout(script.load(&mut conn)).await?;
        }
        Ok(())
    }

    /// The Redis handle.
    pub fn redis(&self) -> &RedisHandle {
        &self.redis
    }

    fn base(&self, queue: &str) -> String {
        self.redis.keys().tagged(&format!("q:{queue}"), "")
    }

    fn global(&self, name: &str) -> String {
        format!("{}:{name}", self.redis.keys().prefix())
    }

    fn cron_key(&self, rest: &str) -> String {
        self.redis.keys().tagged("cron", rest)
    }

    fn conn(&self) -> ConnectionManager {
        self.redis.connection()
    }

    async fn invoke<T: redis::FromRedisValue>(
        &self,
        script: &LuaScript,
        keys: &[String],
        args: &[String],
    ) -> EngineResult<T> {
        let mut conn = self.conn();
        Ok(self
            .redis
            .with_timeout(script.invoke(&mut conn, keys, args))
            .await?)
    }

    async fn remember_queue(&self, queue: &str) -> EngineResult<()> {
        if self.known_queues.lock().contains(queue) {
            return Ok(());
        }
        let mut conn = self.conn();
        let key = self.global("queues");
        self.redis
            .with_timeout(async {
                let _: i64 = redis::cmd("SADD")
                    .arg(&key)
                    .arg(queue)
                    .query_async(&mut conn)
                    .await?;
                Ok(())
            })
            .await?;
        self.known_queues.lock().insert(queue.to_string());
        Ok(())
    }

    async fn queue_names(&self) -> EngineResult<Vec<String>> {
        let mut conn = self.conn();
        let key = self.global("queues");
        let mut names: Vec<String> = self
            .redis
            .with_timeout(async {
                Ok(redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        names.sort();
        Ok(names)
    }

    /// Reads jobs of one queue by id: its own hash, its compact record and its success (one
    /// pipeline); missing ones are skipped.
    async fn read_jobs(&self, queue: &str, ids: &[String]) -> EngineResult<Vec<Job>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let base = self.base(queue);
        let (jobs, fin, held) = (
            format!("{base}jobs"),
            format!("{base}fin"),
            format!("{base}held"),
        );
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.cmd("HGETALL").arg(format!("{base}job:{id}"));
            pipe.cmd("HGET").arg(&jobs).arg(id);
            pipe.cmd("HGET").arg(&fin).arg(id);
            // A compact job runs its first attempt while "id|1" is held (see compact.lua).
            pipe.cmd("HGET").arg(&held).arg(format!("{id}|1"));
            // Its chunk, if it has one: header and state bytes.
            let chunk = chunk_index(id).map_or("", |(c, _)| c);
            pipe.cmd("HMGET")
                .arg(format!("{base}ck:{chunk}"))
                .arg("h")
                .arg("s");
            // Its chunk's live pieces: it runs while one holds it (see compact.lua).
            pipe.cmd("HGET").arg(format!("{base}pieces")).arg(chunk);
        }
        let mut conn = self.conn();
        let values: Vec<redis::Value> = self
            .redis
            .with_timeout(async { Ok(pipe.query_async(&mut conn).await?) })
            .await?;
        if values.len() != ids.len() * 6 {
            return Err(EngineError::Corrupt("short job read reply".into()));
        }
        // (id, its own hash, its `jobs` record, fin, held token, chunk header and states)
        type Read = (
            HashMap<String, String>,
            Option<String>,
            Option<String>,
            Option<String>,
            (Option<String>, Option<Vec<u8>>),
        );
        let mut reads: Vec<Read> = Vec::with_capacity(ids.len());
        let mut values = values.into_iter();
        for id in ids {
            let (Some(map), Some(record), Some(fin), Some(token), Some(chunk), Some(pieces)) = (
                values.next(),
                values.next(),
                values.next(),
                values.next(),
                values.next(),
                values.next(),
            ) else {
                break;
            };
            let mut token: Option<String> = from_value(token)?;
            let chunk: (Option<String>, Option<Vec<u8>>) = from_value(chunk)?;
            let pieces: Option<String> = from_value(pieces)?;
            if let (None, Some(pieces), Some((_, index))) = (&token, &pieces, chunk_index(id)) {
                let running = chunk
                    .1
                    .as_ref()
                    .and_then(|s| s.get(index))
                    .is_none_or(|&b| b == b'.');
                if running {
                    token = piece_token(pieces, index).map(str::to_string);
                }
            }
            reads.push((
                from_value(map)?,
                from_value(record)?,
                from_value(fin)?,
                token,
                chunk,
            ));
        }
        // The records of the chunks that still hold some of these jobs, each read once.
        let mut wanted: Vec<&str> = Vec::new();
        for (id, (map, record, _, _, (header, states))) in ids.iter().zip(&reads) {
            if let (true, None, Some(_), Some((chunk, index))) =
                (map.is_empty(), record, header, chunk_index(id))
            {
                let left = states.as_ref().map(|s| s.get(index)) != Some(Some(&b'x'));
                if left && !wanted.contains(&chunk) {
                    wanted.push(chunk);
                }
            }
        }
        // And the events that tell the successes recorded in their chunk (state byte 128 + k,
        // see `lua/complete.lua`).
        let event_of = |id: &str, states: &Option<Vec<u8>>| -> Option<u8> {
            let (_, index) = chunk_index(id)?;
            let byte = *states.as_ref()?.get(index)?;
            (byte >= 128).then(|| byte - 128)
        };
        let mut wanted_events: Vec<(&str, u8)> = Vec::new();
        for (id, (map, record, fin, _, (_, states))) in ids.iter().zip(&reads) {
            if let (true, None, None, Some(k), Some((chunk, _))) = (
                map.is_empty(),
                record,
                fin,
                event_of(id, states),
                chunk_index(id),
            ) {
                if !wanted_events.contains(&(chunk, k)) {
                    wanted_events.push((chunk, k));
                }
            }
        }
        let mut records: HashMap<&str, String> = HashMap::new();
        let mut events: HashMap<(&str, u8), String> = HashMap::new();
        if !wanted.is_empty() || !wanted_events.is_empty() {
            let mut pipe = redis::pipe();
            for chunk in &wanted {
                pipe.cmd("HGET").arg(format!("{base}ck:{chunk}")).arg("b");
            }
            for (chunk, k) in &wanted_events {
                pipe.cmd("HGET")
                    .arg(format!("{base}ck:{chunk}"))
                    .arg(format!("e{k}"));
            }
            let mut conn = self.conn();
            let values: Vec<Option<String>> = self
                .redis
                .with_timeout(async { Ok(pipe.query_async(&mut conn).await?) })
                .await?;
            let mut values = values.into_iter();
            for chunk in &wanted {
                if let Some(Some(blob)) = values.next() {
                    records.insert(chunk, blob);
                }
            }
            for key in &wanted_events {
                if let Some(Some(event)) = values.next() {
                    events.insert(*key, event);
                }
            }
        }
        let mut out = Vec::with_capacity(ids.len());
        for (id, (map, record, fin, token, (header, states))) in ids.iter().zip(reads) {
            let mut job = if !map.is_empty() {
                decode_job(id, queue, &map)?
            } else if let Some(record) = record {
                decode_compact(id, queue, &record, token.as_deref())?
            } else if fin.is_none()
                && chunk_index(id)
                    .and_then(|(_, index)| states.as_ref()?.get(index))
                    .is_some_and(|&b| b == b'f')
            {
                // Succeeded as told by `fin`, whose entry has expired: forgotten.
                continue;
            } else if let Some(record) = chunk_index(id).and_then(|(chunk, index)| {
                let left = states.as_ref().map(|s| s.get(index)) != Some(Some(&b'x'));
                left.then(|| chunk_job_record(id, header.as_deref()?, records.get(chunk)?, index))
                    .flatten()
            }) {
                decode_compact(id, queue, &record, token.as_deref())?
            } else {
                continue;
            };
            let event = || {
                let k = event_of(id, &states)?;
                events.get(&(chunk_index(id)?.0, k))
            };
            if let Some(fin) = fin.as_ref().or_else(event) {
                apply_fin(&mut job, fin);
            }
            out.push(job);
        }
        Ok(out)
    }

    async fn find_queue_of(&self, id: &str) -> EngineResult<Option<String>> {
        if !valid_id(id) {
            return Ok(None);
        }
        let names = self.queue_names().await?;
        if names.is_empty() {
            return Ok(None);
        }
        let mut pipe = redis::pipe();
        for name in &names {
            let base = self.base(name);
            pipe.cmd("EXISTS").arg(format!("{base}job:{id}"));
            pipe.cmd("HEXISTS").arg(format!("{base}jobs")).arg(id);
            let chunk = chunk_index(id).map_or("", |(c, _)| c);
            pipe.cmd("EXISTS").arg(format!("{base}ck:{chunk}"));
        }
        let mut conn = self.conn();
        let exists: Vec<i64> = self
            .redis
            .with_timeout(async { Ok(pipe.query_async(&mut conn).await?) })
            .await?;
        Ok(names
            .into_iter()
            .zip(exists.chunks(3))
            .find(|(_, e)| e.contains(&1))
            .map(|(n, _)| n))
    }

    async fn range(&self, cmd: &str, key: String, limit: usize) -> EngineResult<Vec<String>> {
        let mut conn = self.conn();
        let stop = limit.saturating_sub(1) as i64;
        self.redis
            .with_timeout(async {
                Ok(redis::cmd(cmd)
                    .arg(key)
                    .arg(0)
                    .arg(stop)
                    .query_async(&mut conn)
                    .await?)
            })
            .await
            .map_err(EngineError::from)
    }

    async fn enqueue_chunk(
        &self,
        queue: &str,
        specs: impl ExactSizeIterator<Item = &JobSpec>,
    ) -> EngineResult<Vec<Enqueued>> {
        let n = specs.len();
        let mut args = Vec::with_capacity(8);
        let mut out = Vec::with_capacity(n);
        args.push(n.to_string());
        // Runs in batch order (see enqueue.lua): a count, then the run. A run of compact jobs
        // (ready at once, no unique key) of one priority is a chunk: its priority, its id C (the
        // jobs' ids are C and their index), the retention, and its records joined by newlines;
        // other jobs send 4 arguments each. `run_at`: where the current run's count goes.
        let retention = ms(self.config.retention).to_string();
        let mut run_at = 0;
        let mut run: Option<(bool, i32)> = None;
        let mut run_len: i64 = 0;
        let mut chunk_id = String::new();
        // The current chunk's records (its argument is filled in when the run ends).
        let mut blob: Vec<u8> = Vec::new();
        for spec in specs {
            let compact = spec.unique_key.is_none() && spec.delay_ms == 0 && spec.run_at.is_none();
            let key = (compact, if compact { spec.priority } else { 0 });
            let full = run_len as usize >= CHUNK_MAX || blob.len() >= CHUNK_MAX_BYTES;
            if run != Some(key) || (compact && full) {
                if run.is_some() {
                    args[run_at] = run_count(key_of(run), run_len);
                    if key_of(run) {
                        args[run_at + 4] = blob_string(&mut blob)?;
                    }
                }
                run = Some(key);
                run_len = 0;
                run_at = args.len();
                args.push(String::new());
                if compact {
                    chunk_id = new_id();
                    chunk_id.truncate(24);
                    args.push(spec.priority.to_string());
                    args.push(chunk_id.clone());
                    args.push(retention.clone());
                    args.push(String::new());
                }
            }
            if compact {
                // The record "max_attempts|spec", after a newline unless it is the first.
                if run_len > 0 {
                    blob.push(b'\n');
                }
                blob.extend_from_slice(spec.max_attempts.to_string().as_bytes());
                blob.push(b'|');
                serde_json::to_writer(&mut blob, &StoredSpecRef::from(spec))
                    .map_err(|e| EngineError::Invalid(e.to_string()))?;
                out.push(Enqueued {
                    id: chunk_job_id(&chunk_id, run_len as usize),
                    duplicate: false,
                });
                run_len += 1;
                continue;
            }
            run_len += 1;
            // body = "priority|max_attempts|spec"; opts = "delay|run_at|unique_key".
            let mut body = format!("{}|{}|", spec.priority, spec.max_attempts).into_bytes();
            serde_json::to_writer(&mut body, &StoredSpecRef::from(spec))
                .map_err(|e| EngineError::Invalid(e.to_string()))?;
            let body = String::from_utf8(body).map_err(|e| EngineError::Invalid(e.to_string()))?;
            let id = new_id();
            args.push(id.clone());
            out.push(Enqueued {
                id,
                duplicate: false,
            });
            args.push(spec.priority.to_string());
            args.push(format!(
                "{}|{}|{}",
                spec.delay_ms,
                spec.run_at.unwrap_or(-1),
                spec.unique_key.as_deref().unwrap_or("")
            ));
            args.push(body);
        }
        if run.is_some() {
            args[run_at] = run_count(key_of(run), run_len);
            if key_of(run) {
                args[run_at + 4] = blob_string(&mut blob)?;
            }
        }
        // Only duplicates come back: (position from 1, the live job's id).
        let duplicates: Vec<(usize, String)> = self
            .invoke(&self.scripts.enqueue, &[self.base(queue)], &args)
            .await?;
        for (position, holder) in duplicates {
            let slot = position
                .checked_sub(1)
                .and_then(|i| out.get_mut(i))
                .ok_or_else(|| {
                    EngineError::Corrupt(format!("enqueue reply: position {position}"))
                })?;
            *slot = Enqueued {
                id: holder,
                duplicate: true,
            };
        }
        Ok(out)
    }

    fn lease_args(leases: &[Lease]) -> Vec<String> {
        leases
            .iter()
            .flat_map(|l| [l.id.clone(), l.attempt.to_string()])
            .collect()
    }
}

/// The compactness of an enqueue run (see `enqueue_chunk`).
fn key_of(run: Option<(bool, i32)>) -> bool {
    run.map(|(compact, _)| compact).unwrap_or(false)
}

/// An enqueue run's count: positive for compact jobs, negative for others (see enqueue.lua).
fn run_count(compact: bool, len: i64) -> String {
    if compact { len } else { -len }.to_string()
}

fn parse_i64(map: &HashMap<String, String>, field: &str) -> Option<i64> {
    map.get(field).and_then(|v| v.parse().ok())
}

fn decode_job(id: &str, queue: &str, map: &HashMap<String, String>) -> EngineResult<Job> {
    let spec: StoredSpec = serde_json::from_str(map.get("spec").map(String::as_str).unwrap_or(""))
        .map_err(|e| EngineError::Corrupt(format!("job {id}: spec: {e}")))?;
    let state = map
        .get("st")
        .and_then(|s| JobState::parse(s))
        .ok_or_else(|| EngineError::Corrupt(format!("job {id}: no state")))?;
    let created_at = parse_i64(map, "ca");
    Ok(Job {
        id: id.to_string(),
        queue: queue.to_string(),
        kind: spec.kind,
        payload: spec.payload,
        priority: spec.priority,
        state,
        attempts: parse_i64(map, "att").unwrap_or(0).max(0) as u32,
        max_attempts: spec.max_attempts,
        timeout_ms: spec.timeout_ms,
        // A job ready at once has no 'ra' and no 'ea' (see enqueue.lua): both are 'ca'.
        run_at: parse_i64(map, "ra").or(created_at),
        unique_key: spec.unique_key,
        created_at: created_at.unwrap_or(0),
        enqueued_at: parse_i64(map, "ea").or(if map.contains_key("ra") {
            None
        } else {
            created_at
        }),
        started_at: parse_i64(map, "sa"),
        finished_at: parse_i64(map, "fa"),
        worker: map.get("w").cloned(),
        result: map
            .get("res")
            .filter(|r| !r.is_empty())
            .and_then(|r| serde_json::from_str(r).ok()),
        error: map.get("err").cloned(),
    })
}

/// The job id of a ready list element (`*id|...` for a compact job, `id|attempt|...` for a job
/// in its own hash, see `fetch.lua`) or of an in-flight member (`id|attempt`); without `|`, a
/// bare id.
fn element_id(element: &str) -> &str {
    let element = element.strip_prefix('*').unwrap_or(element);
    element.split_once('|').map_or(element, |(id, _)| id)
}

fn from_value<T: redis::FromRedisValue>(value: redis::Value) -> EngineResult<T> {
    redis::from_redis_value(value).map_err(|e| EngineError::Corrupt(e.to_string()))
}

fn num(s: &str) -> i64 {
    s.parse::<i64>().unwrap_or(0)
}

fn parse_spec(id: &str, json: &str) -> EngineResult<StoredSpec> {
    serde_json::from_str(json).map_err(|e| EngineError::Corrupt(format!("job {id}: spec: {e}")))
}

/// One fetched job (`started` is the script's `now`, sent once per batch): a compact element
/// `*id|created|priority|max_attempts|spec` (attempt 1 now), or an element
/// `id|attempt|created|enqueued|run_at|spec` whose attempt is the one before this fetch.
fn decode_fetched(queue: &str, worker: &str, started: i64, element: &str) -> EngineResult<Job> {
    let (id, attempt, created_at, enqueued_at, run_at, spec) =
        if let Some(compact) = element.strip_prefix('*') {
            let mut fields = compact.splitn(5, '|');
            let mut next = || fields.next().unwrap_or("");
            let id = next();
            let created_at = num(next());
            let _priority = next();
            let _max = next();
            (id, 1, created_at, created_at, created_at, next())
        } else {
            let mut fields = element.splitn(6, '|');
            let mut next = || fields.next().unwrap_or("");
            let id = next();
            let attempt = num(next()).max(0) + 1;
            let created_at = num(next());
            let enqueued_at = num(next());
            let run_at = num(next());
            (id, attempt, created_at, enqueued_at, run_at, next())
        };
    let spec = parse_spec(id, spec)?;
    Ok(Job {
        id: id.to_string(),
        queue: queue.to_string(),
        kind: spec.kind,
        payload: spec.payload,
        priority: spec.priority,
        state: JobState::Running,
        attempts: attempt.min(u32::MAX as i64) as u32,
        max_attempts: spec.max_attempts,
        timeout_ms: spec.timeout_ms,
        run_at: Some(run_at),
        unique_key: spec.unique_key,
        created_at,
        enqueued_at: Some(enqueued_at),
        started_at: Some(started),
        finished_at: None,
        worker: Some(worker.to_string()),
        result: None,
        error: None,
    })
}

/// The jobs of a fetched piece of a chunk (see `lua/fetch.lua`), after its `#`:
/// `C|lo|created|priority|count|mask|records`: the jobs lo.. of chunk C, whose records
/// (`max_attempts|spec`) are joined by newlines; `mask`, when not empty, has a byte per job, `x`
/// for a job not leased (it left the chunk).
fn decode_piece(
    queue: &str,
    worker: &str,
    started: i64,
    piece: &str,
    jobs: &mut Vec<Job>,
) -> EngineResult<()> {
    let corrupt = || EngineError::Corrupt(format!("fetched chunk piece {piece:.40}"));
    let mut fields = piece.splitn(7, '|');
    let mut next = || fields.next().ok_or_else(corrupt);
    let (chunk, lo, created, _priority, _count, mask, records) = (
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
        next()?,
    );
    let lo: usize = lo.parse().map_err(|_| corrupt())?;
    let created = num(created);
    let mask = mask.as_bytes();
    for (i, record) in records.split('\n').enumerate() {
        if mask.get(i) == Some(&b'x') {
            continue;
        }
        let id = chunk_job_id(chunk, lo + i);
        let (_max, spec) = record.split_once('|').ok_or_else(corrupt)?;
        let spec = parse_spec(&id, spec)?;
        jobs.push(Job {
            id,
            queue: queue.to_string(),
            kind: spec.kind,
            payload: spec.payload,
            priority: spec.priority,
            state: JobState::Running,
            attempts: 1,
            max_attempts: spec.max_attempts,
            timeout_ms: spec.timeout_ms,
            run_at: Some(created),
            unique_key: spec.unique_key,
            created_at: created,
            enqueued_at: Some(created),
            started_at: Some(started),
            finished_at: None,
            worker: Some(worker.to_string()),
            result: None,
            error: None,
        });
    }
    Ok(())
}

/// A compact job's record in its queue's `jobs` hash (see `compact.lua`):
/// `*id|created|priority|max_attempts|spec`, running when `token` (the batch token
/// `seq|started|worker` holding its member `id|1`) is given; records written before batch
/// leases may read `r<started>|<worker length>|<worker>` followed by that while running.
fn decode_compact(id: &str, queue: &str, record: &str, token: Option<&str>) -> EngineResult<Job> {
    let corrupt = || EngineError::Corrupt(format!("job {id}: record"));
    let held = token.and_then(|t| {
        let mut parts = t.splitn(3, '|');
        let _seq = parts.next()?;
        let started = parts.next()?;
        Some((num(started), parts.next()?.to_string()))
    });
    let (state, started_at, worker, queued) = match record.strip_prefix('r') {
        Some(rest) => {
            let (started, rest) = rest.split_once('|').ok_or_else(corrupt)?;
            let (len, rest) = rest.split_once('|').ok_or_else(corrupt)?;
            let len: usize = len.parse().map_err(|_| corrupt())?;
            let worker = rest.get(..len).ok_or_else(corrupt)?;
            let queued = rest.get(len..).ok_or_else(corrupt)?;
            (
                JobState::Running,
                Some(num(started)),
                Some(worker.to_string()),
                queued,
            )
        }
        None => match held {
            Some((started, worker)) => (JobState::Running, Some(started), Some(worker), record),
            None => (JobState::Queued, None, None, record),
        },
    };
    let mut fields = queued.strip_prefix('*').ok_or_else(corrupt)?.splitn(5, '|');
    let mut next = || fields.next().unwrap_or("");
    let _id = next();
    let created_at = num(next());
    let _priority = next();
    let _max = next();
    let spec = parse_spec(id, next())?;
    Ok(Job {
        id: id.to_string(),
        queue: queue.to_string(),
        kind: spec.kind,
        payload: spec.payload,
        priority: spec.priority,
        state,
        attempts: u32::from(state == JobState::Running),
        max_attempts: spec.max_attempts,
        timeout_ms: spec.timeout_ms,
        run_at: Some(created_at),
        unique_key: spec.unique_key,
        created_at,
        enqueued_at: Some(created_at),
        started_at,
        finished_at: None,
        worker,
        result: None,
        error: None,
    })
}

/// A success recorded in the `fin` hash (`finished` or `finished|result`) wins over the state
/// the job's record still shows.
fn apply_fin(job: &mut Job, fin: &str) {
    let (finished, mut result) = match fin.split_once('|') {
        Some((f, r)) => (f, Some(r)),
        None => (fin, None),
    };
    // "@started|#worker|worker" (then "|result"): when and where a compact job ran.
    if let Some(run) = result.and_then(|r| r.strip_prefix('@')) {
        let ran = run.split_once('|').and_then(|(started, rest)| {
            let (len, rest) = rest.split_once('|')?;
            let len: usize = len.parse().ok()?;
            let worker = rest.get(..len)?;
            Some((num(started), worker, rest.get(len..)?))
        });
        if let Some((started, worker, rest)) = ran {
            if job.started_at.is_none() {
                job.started_at = Some(started);
                job.worker = Some(worker.to_string());
            }
            job.attempts = job.attempts.max(1);
            result = rest.strip_prefix('|');
        }
    }
    job.state = JobState::Succeeded;
    job.finished_at = Some(num(finished));
    job.result = result
        .filter(|r| !r.is_empty())
        .and_then(|r| serde_json::from_str(r).ok());
}

#[async_trait]
impl Engine for RedisEngine {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn ping(&self) -> EngineResult<()> {
        Ok(self.redis.ping().await?)
    }

    async fn enqueue(&self, jobs: Vec<JobSpec>) -> EngineResult<Vec<Enqueued>> {
        for spec in &jobs {
            spec.validate().map_err(EngineError::Invalid)?;
        }
        // One queue (the usual case): no grouping.
        if let Some(first) = jobs.first() {
            if jobs.iter().all(|j| j.queue == first.queue) {
                let queue = first.queue.as_str();
                self.remember_queue(queue).await?;
                let mut out = Vec::with_capacity(jobs.len());
                for chunk in jobs.chunks(MAX_BATCH) {
                    let answers = self.enqueue_chunk(queue, chunk.iter()).await?;
                    if answers.len() != chunk.len() {
                        return Err(EngineError::Corrupt("short enqueue reply".into()));
                    }
                    out.extend(answers);
                }
                return Ok(out);
            }
        }
        // Group by queue (each queue is one slot), keeping the answers in input order.
        let mut by_queue: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, spec) in jobs.iter().enumerate() {
            by_queue.entry(spec.queue.as_str()).or_default().push(i);
        }
        let mut out: Vec<Option<Enqueued>> = vec![None; jobs.len()];
        for (queue, indexes) in by_queue {
            self.remember_queue(queue).await?;
            for chunk in indexes.chunks(MAX_BATCH) {
                let answers = self
                    .enqueue_chunk(queue, chunk.iter().map(|&i| &jobs[i]))
                    .await?;
                for (&i, answer) in chunk.iter().zip(answers) {
                    out[i] = Some(answer);
                }
            }
        }
        out.into_iter()
            .map(|e| e.ok_or_else(|| EngineError::Corrupt("short enqueue reply".into())))
            .collect()
    }

    async fn fetch(
        &self,
        queue: &str,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> EngineResult<Vec<Job>> {
        validate_queue_name(queue).map_err(EngineError::Invalid)?;
        let max = max.clamp(1, 1000);
        let flat: Vec<String> = self
            .invoke(
                &self.scripts.fetch,
                &[self.base(queue)],
                &[
                    worker.to_string(),
                    max.to_string(),
                    ms(lease).to_string(),
                    max.max(100).to_string(),
                ],
            )
            .await?;
        let Some((started, elements)) = flat.split_first() else {
            return Ok(Vec::new());
        };
        let started = started.parse::<i64>().unwrap_or(0);
        let mut jobs = Vec::with_capacity(max);
        for element in elements {
            if let Some(piece) = element.strip_prefix('#') {
                decode_piece(queue, worker, started, piece, &mut jobs)?;
            } else {
                jobs.push(decode_fetched(queue, worker, started, element)?);
            }
        }
        Ok(jobs)
    }

    async fn heartbeat(
        &self,
        queue: &str,
        leases: &[Lease],
        lease: Duration,
    ) -> EngineResult<Vec<String>> {
        let mut lost = Vec::new();
        for chunk in leases.chunks(1000) {
            let mut args = vec![ms(lease).to_string()];
            args.extend(Self::lease_args(chunk));
            let part: Vec<String> = self
                .invoke(&self.scripts.heartbeat, &[self.base(queue)], &args)
                .await?;
            lost.extend(part);
        }
        Ok(lost)
    }

    async fn complete(&self, queue: &str, results: &[Completion]) -> EngineResult<usize> {
        let mut applied = 0;
        for chunk in results.chunks(MAX_ACK_BATCH) {
            let mut args = Vec::with_capacity(3 + chunk.len() * 3);
            args.push(ms(self.config.retention).to_string());
            args.push(ms(self.config.dead_retention).to_string());
            args.push(self.config.recent_cap.to_string());
            // Plain successes of attempt 1 go by chunk id (see complete.lua): "#" .. the first
            // 24 characters of their ids .. the last 2 of each (for a job of a chunk, its
            // index), one argument per chunk.
            let mut groups: Vec<String> = Vec::new();
            let mut group_of: HashMap<&str, usize> = HashMap::new();
            let mut others: Vec<&Completion> = Vec::with_capacity(chunk.len());
            for c in chunk {
                let plain = matches!(c.outcome, Outcome::Succeeded(None)) && c.lease.attempt == 1;
                match chunk_index(&c.lease.id).filter(|_| plain) {
                    Some((prefix, _)) => {
                        let at = *group_of.entry(prefix).or_insert_with(|| {
                            groups.push(format!("#{prefix}"));
                            groups.len() - 1
                        });
                        groups[at].push_str(&c.lease.id[24..]);
                    }
                    None => others.push(c),
                }
            }
            args.extend(groups);
            // Runs (see complete.lua): a count, then the run's acks; plain successes send only
            // their member "id|attempt", other outcomes the member and the outcome.
            let mut run_at = 0;
            let mut run: Option<bool> = None;
            let mut run_len: i64 = 0;
            for c in others {
                let plain = matches!(c.outcome, Outcome::Succeeded(None));
                if run != Some(plain) {
                    if let Some(p) = run {
                        args[run_at] = (if p { run_len } else { -run_len }).to_string();
                    }
                    run = Some(plain);
                    run_len = 0;
                    run_at = args.len();
                    args.push(String::new());
                }
                run_len += 1;
                args.push(format!("{}|{}", c.lease.id, c.lease.attempt));
                if !plain {
                    args.push(match &c.outcome {
                        Outcome::Succeeded(None) => "o".to_string(),
                        Outcome::Succeeded(Some(result)) => format!("o{result}"),
                        Outcome::Failed { error, backoff } => {
                            format!("f{}|{error}", ms(*backoff))
                        }
                        Outcome::Fatal(error) => format!("x{error}"),
                    });
                }
            }
            if let Some(p) = run {
                args[run_at] = (if p { run_len } else { -run_len }).to_string();
            }
            let n: usize = self
                .invoke(&self.scripts.complete, &[self.base(queue)], &args)
                .await?;
            applied += n;
        }
        Ok(applied)
    }

    async fn release(&self, queue: &str, leases: &[Lease]) -> EngineResult<usize> {
        let mut n = 0;
        for chunk in leases.chunks(1000) {
            let part: usize = self
                .invoke(
                    &self.scripts.release,
                    &[self.base(queue)],
                    &Self::lease_args(chunk),
                )
                .await?;
            n += part;
        }
        Ok(n)
    }

    async fn promote(&self, queue: &str, limit: usize) -> EngineResult<usize> {
        self.invoke(
            &self.scripts.promote,
            &[self.base(queue)],
            &[limit.clamp(1, 1000).to_string()],
        )
        .await
    }

    async fn reap(&self, queue: &str, limit: usize) -> EngineResult<usize> {
        self.invoke(
            &self.scripts.reap,
            &[self.base(queue)],
            &[
                limit.clamp(1, 1000).to_string(),
                ms(self.config.dead_retention).to_string(),
                self.config.recent_cap.to_string(),
            ],
        )
        .await
    }

    async fn get(&self, id: &str) -> EngineResult<Option<Job>> {
        let Some(queue) = self.find_queue_of(id).await? else {
            return Ok(None);
        };
        Ok(self
            .read_jobs(&queue, &[id.to_string()])
            .await?
            .into_iter()
            .next())
    }

    async fn cancel(&self, id: &str) -> EngineResult<Option<JobState>> {
        let Some(queue) = self.find_queue_of(id).await? else {
            return Ok(None);
        };
        let reply: String = self
            .invoke(
                &self.scripts.cancel,
                &[self.base(&queue)],
                &[
                    id.to_string(),
                    ms(self.config.retention).to_string(),
                    self.config.recent_cap.to_string(),
                ],
            )
            .await?;
        match reply.as_str() {
            "ok" => Ok(Some(JobState::Cancelled)),
            "missing" => Ok(None),
            other => Err(EngineError::Conflict {
                id: id.into(),
                state: JobState::parse(other).unwrap_or(JobState::Succeeded),
                action: "cancel",
            }),
        }
    }

    async fn retry(&self, id: &str) -> EngineResult<Option<JobState>> {
        let Some(queue) = self.find_queue_of(id).await? else {
            return Ok(None);
        };
        let reply: String = self
            .invoke(&self.scripts.retry, &[self.base(&queue)], &[id.to_string()])
            .await?;
        match reply.as_str() {
            "ok" => Ok(Some(JobState::Queued)),
            "missing" => Ok(None),
            other => Err(EngineError::Conflict {
                id: id.into(),
                state: JobState::parse(other).unwrap_or(JobState::Queued),
                action: "retry",
            }),
        }
    }

    async fn list(&self, filter: &ListFilter) -> EngineResult<Vec<Job>> {
        let limit = filter.limit.clamp(1, 1000);
        let names = match &filter.queue {
            Some(q) => vec![q.clone()],
            None => self.queue_names().await?,
        };
        let states: Vec<JobState> = match filter.state {
            Some(s) => vec![s],
            None => vec![
                JobState::Running,
                JobState::Queued,
                JobState::Scheduled,
                JobState::Succeeded,
                JobState::Dead,
            ],
        };
        let mut out = Vec::new();
        for name in names {
            if validate_queue_name(&name).is_err() {
                continue;
            }
            let base = self.base(&name);
            let mut ids: Vec<String> = Vec::new();
            for s in &states {
                let part = match s {
                    JobState::Running => {
                        // Members "id|attempt" held per batch (one HSCAN step), then leases
                        // written before batch leases.
                        let mut conn = self.conn();
                        let key = format!("{base}held");
                        let (_, fields): (String, Vec<String>) = self
                            .redis
                            .with_timeout(async {
                                Ok(redis::cmd("HSCAN")
                                    .arg(key)
                                    .arg(0)
                                    .arg("COUNT")
                                    .arg(limit)
                                    .query_async(&mut conn)
                                    .await?)
                            })
                            .await?;
                        // (The field '' is the hash's sentinel, see fetch.lua.)
                        let mut members: Vec<String> = fields
                            .into_iter()
                            .step_by(2)
                            .filter(|f| !f.is_empty())
                            .take(limit)
                            .collect();
                        members.extend(
                            self.range("ZRANGE", format!("{base}inflight"), limit)
                                .await?,
                        );
                        let mut part: Vec<String> = members
                            .iter()
                            .map(|member| element_id(member).to_string())
                            .collect();
                        // Chunk jobs run per piece (see compact.lua): one HSCAN step of the
                        // chunks with live pieces; `read_jobs` keeps those still running.
                        let mut conn = self.conn();
                        let key = format!("{base}pieces");
                        let (_, entries): (String, Vec<String>) = self
                            .redis
                            .with_timeout(async {
                                Ok(redis::cmd("HSCAN")
                                    .arg(key)
                                    .arg(0)
                                    .arg("COUNT")
                                    .arg(limit)
                                    .query_async(&mut conn)
                                    .await?)
                            })
                            .await?;
                        for pair in entries.chunks(2) {
                            if let [chunk, pieces] = pair {
                                for (lo, count) in piece_ranges(pieces) {
                                    let room = limit.saturating_sub(part.len());
                                    part.extend(
                                        (lo..lo.saturating_add(count).min(CHUNK_MAX))
                                            .take(room)
                                            .map(|i| chunk_job_id(chunk, i)),
                                    );
                                }
                            }
                        }
                        part
                    }
                    JobState::Queued => {
                        let prios = self.range("ZRANGE", format!("{base}prios"), 16).await?;
                        let mut part = Vec::new();
                        for p in prios {
                            if part.len() >= limit {
                                break;
                            }
                            let elements = self
                                .range("LRANGE", format!("{base}ready:{p}"), limit)
                                .await?;
                            for element in &elements {
                                if part.len() >= limit {
                                    break;
                                }
                                match chunk_element_ids(element) {
                                    Some((chunk, range)) => part.extend(
                                        range
                                            .take(limit - part.len())
                                            .map(|i| chunk_job_id(chunk, i)),
                                    ),
                                    None => part.push(element_id(element).to_string()),
                                }
                            }
                        }
                        part
                    }
                    JobState::Scheduled | JobState::Retrying => {
                        self.range("ZRANGE", format!("{base}scheduled"), limit)
                            .await?
                    }
                    JobState::Dead => {
                        self.range("ZREVRANGE", format!("{base}dead"), limit)
                            .await?
                    }
                    JobState::Succeeded | JobState::Cancelled => {
                        // Successes: the newest ids of `done` (entries "expiry(13 digits)"
                        // then "id,id,...", one per ack call), read newest first in pages of
                        // a few entries until `limit` ids; dead and cancelled jobs: `recent`.
                        const PAGE: i64 = 16;
                        let want = limit.min(1000);
                        let key = format!("{base}done");
                        let mut part: Vec<String> = Vec::new();
                        let mut end: i64 = -1;
                        while part.len() < want {
                            let start = end - PAGE + 1;
                            let mut conn = self.conn();
                            let entries: Vec<String> = self
                                .redis
                                .with_timeout(async {
                                    Ok(redis::cmd("LRANGE")
                                        .arg(&key)
                                        .arg(start)
                                        .arg(end)
                                        .query_async(&mut conn)
                                        .await?)
                                })
                                .await?;
                            for entry in entries.iter().rev() {
                                // ('#': successes recorded in their chunks, see complete.lua.)
                                let ids = entry.get(13..).unwrap_or("");
                                match ids.strip_prefix('#') {
                                    // Per chunk: its id, then its jobs' indexes (see
                                    // complete.lua).
                                    Some(groups) => {
                                        for group in groups.rsplit(',') {
                                            let (Some(chunk), Some(codes)) =
                                                (group.get(..24), group.get(24..))
                                            else {
                                                continue;
                                            };
                                            for code in codes.as_bytes().chunks(2).rev() {
                                                if part.len() < want && code.len() == 2 {
                                                    let mut id = String::with_capacity(26);
                                                    id.push_str(chunk);
                                                    id.extend(code.iter().map(|&b| b as char));
                                                    part.push(id);
                                                }
                                            }
                                        }
                                    }
                                    None => {
                                        for id in ids.rsplit(',').filter(|id| !id.is_empty()) {
                                            if part.len() < want {
                                                part.push(id.to_string());
                                            }
                                        }
                                    }
                                }
                            }
                            // A short page is the list's start; `want` entries hold `want` ids.
                            if (entries.len() as i64) < PAGE || (-start) as usize >= want {
                                break;
                            }
                            end = start - 1;
                        }
                        part.extend(self.range("LRANGE", format!("{base}recent"), limit).await?);
                        part
                    }
                };
                ids.extend(part);
            }
            let mut seen = HashSet::new();
            ids.retain(|id| seen.insert(id.clone()));
            for job in self.read_jobs(&name, &ids).await? {
                if filter.state.is_none_or(|s| s == job.state) && out.len() < limit {
                    out.push(job);
                }
            }
        }
        Ok(out)
    }

    async fn queues(&self) -> EngineResult<Vec<QueueStats>> {
        let mut out = Vec::new();
        for name in self.queue_names().await? {
            if validate_queue_name(&name).is_err() {
                continue;
            }
            let v: Vec<u64> = self
                .invoke(&self.scripts.stats, &[self.base(&name)], &[] as &[String])
                .await?;
            let at = |i: usize| v.get(i).copied().unwrap_or(0);
            out.push(QueueStats {
                name,
                queued: at(0),
                scheduled: at(1),
                running: at(2),
                dead: at(3),
                enqueued_total: at(4),
                succeeded_total: at(5),
                failed_total: at(6),
                dead_total: at(7),
                max_concurrency: at(8),
            });
        }
        Ok(out)
    }

    async fn set_limits(&self, queue: &str, limits: &QueueLimits) -> EngineResult<()> {
        validate_queue_name(queue).map_err(EngineError::Invalid)?;
        self.remember_queue(queue).await?;
        let key = format!("{}cfg", self.base(queue));
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(&key)
            .arg("max_concurrency")
            .arg(limits.max_concurrency)
            .ignore();
        match &limits.rate_limit {
            Some(rate) => {
                let json =
                    serde_json::to_string(rate).map_err(|e| EngineError::Invalid(e.to_string()))?;
                pipe.cmd("HSET").arg(&key).arg("rate").arg(json).ignore();
            }
            None => {
                pipe.cmd("HDEL").arg(&key).arg("rate").ignore();
            }
        }
        let mut conn = self.conn();
        self.redis
            .with_timeout(async {
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn limits(&self, queue: &str) -> EngineResult<QueueLimits> {
        validate_queue_name(queue).map_err(EngineError::Invalid)?;
        let key = format!("{}cfg", self.base(queue));
        let mut conn = self.conn();
        let (max, rate): (Option<u64>, Option<String>) = self
            .redis
            .with_timeout(async {
                Ok(redis::cmd("HMGET")
                    .arg(&key)
                    .arg("max_concurrency")
                    .arg("rate")
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(QueueLimits {
            max_concurrency: max.unwrap_or(0),
            rate_limit: match rate {
                Some(json) => Some(
                    serde_json::from_str(&json)
                        .map_err(|e| EngineError::Corrupt(format!("queue {queue} rate: {e}")))?,
                ),
                None => None,
            },
        })
    }

    async fn register_worker(&self, info: &WorkerInfo, ttl: Duration) -> EngineResult<()> {
        let json = serde_json::to_string(info).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("ZADD")
            .arg(self.global("workers"))
            .arg(now_ms() + ms(ttl) as i64)
            .arg(&info.id)
            .ignore()
            .cmd("SET")
            .arg(self.global(&format!("worker:{}", info.id)))
            .arg(json)
            .arg("PX")
            .arg(ms(ttl))
            .ignore();
        let mut conn = self.conn();
        self.redis
            .with_timeout(async {
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn unregister_worker(&self, id: &str) -> EngineResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("ZREM")
            .arg(self.global("workers"))
            .arg(id)
            .ignore()
            .cmd("DEL")
            .arg(self.global(&format!("worker:{id}")))
            .ignore();
        let mut conn = self.conn();
        self.redis
            .with_timeout(async {
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn workers(&self) -> EngineResult<Vec<WorkerInfo>> {
        let key = self.global("workers");
        let mut conn = self.conn();
        let now = now_ms();
        let ids: Vec<String> = self
            .redis
            .with_timeout(async {
                let () = redis::cmd("ZREMRANGEBYSCORE")
                    .arg(&key)
                    .arg("-inf")
                    .arg(now)
                    .query_async(&mut conn)
                    .await
                    .map(|_: i64| ())?;
                Ok(redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(999)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids
            .iter()
            .map(|id| self.global(&format!("worker:{id}")))
            .collect();
        let mut conn = self.conn();
        let values: Vec<Option<String>> = self
            .redis
            .with_timeout(async { Ok(redis::cmd("MGET").arg(keys).query_async(&mut conn).await?) })
            .await?;
        Ok(values
            .into_iter()
            .flatten()
            .filter_map(|v| serde_json::from_str(&v).ok())
            .collect())
    }

    async fn put_schedule(&self, schedule: &Schedule) -> EngineResult<()> {
        let json =
            serde_json::to_string(schedule).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut pipe = redis::pipe();
        pipe.cmd("HSET")
            .arg(self.global("schedules"))
            .arg(&schedule.name)
            .arg(json)
            .ignore()
            .cmd("HSETNX")
            .arg(self.cron_key("last"))
            .arg(&schedule.name)
            .arg(now_ms())
            .ignore();
        let mut conn = self.conn();
        self.redis
            .with_timeout(async {
                let () = pipe.query_async(&mut conn).await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn schedules(&self) -> EngineResult<Vec<Schedule>> {
        let key = self.global("schedules");
        let mut conn = self.conn();
        let map: HashMap<String, String> = self
            .redis
            .with_timeout(async {
                Ok(redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        let mut out: Vec<Schedule> = map
            .values()
            .filter_map(|v| serde_json::from_str(v).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    async fn delete_schedule(&self, name: &str) -> EngineResult<bool> {
        let mut pipe = redis::pipe();
        pipe.cmd("HDEL")
            .arg(self.global("schedules"))
            .arg(name)
            .cmd("HDEL")
            .arg(self.cron_key("last"))
            .arg(name)
            .ignore();
        let mut conn = self.conn();
        let (deleted,): (i64,) = self
            .redis
            .with_timeout(async { Ok(pipe.query_async(&mut conn).await?) })
            .await?;
        Ok(deleted == 1)
    }

    async fn acquire_leadership(&self, node: &str, ttl: Duration) -> EngineResult<Option<u64>> {
        let token: u64 = self
            .invoke(
                &self.scripts.leader,
                &[self.cron_key("leader"), self.cron_key("fence")],
                &[node.to_string(), ms(ttl).max(1).to_string()],
            )
            .await?;
        Ok((token > 0).then_some(token))
    }

    async fn resign_leadership(&self, node: &str) -> EngineResult<()> {
        let _: i64 = self
            .invoke(
                &self.scripts.resign,
                &[self.cron_key("leader")],
                &[node.to_string()],
            )
            .await?;
        Ok(())
    }

    async fn last_fire(&self, schedule: &str) -> EngineResult<Option<i64>> {
        let key = self.cron_key("last");
        let mut conn = self.conn();
        let value: Option<i64> = self
            .redis
            .with_timeout(async {
                Ok(redis::cmd("HGET")
                    .arg(&key)
                    .arg(schedule)
                    .query_async(&mut conn)
                    .await?)
            })
            .await?;
        Ok(value)
    }

    async fn claim_fire(
        &self,
        node: &str,
        token: u64,
        schedule: &str,
        tick_ms: i64,
    ) -> EngineResult<bool> {
        let claimed: i64 = self
            .invoke(
                &self.scripts.fire,
                &[
                    self.cron_key("leader"),
                    self.cron_key("last"),
                    self.cron_key(&format!("fired:{schedule}:{tick_ms}")),
                ],
                &[
                    format!("{node}|{token}"),
                    schedule.to_string(),
                    tick_ms.to_string(),
                    "fire".into(),
                ],
            )
            .await?;
        Ok(claimed == 1)
    }

    async fn skip_fire(
        &self,
        node: &str,
        token: u64,
        schedule: &str,
        tick_ms: i64,
    ) -> EngineResult<()> {
        let _: i64 = self
            .invoke(
                &self.scripts.fire,
                &[
                    self.cron_key("leader"),
                    self.cron_key("last"),
                    self.cron_key(&format!("fired:{schedule}:{tick_ms}")),
                ],
                &[
                    format!("{node}|{token}"),
                    schedule.to_string(),
                    tick_ms.to_string(),
                    "skip".into(),
                ],
            )
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
    const SPEC: &str = r#"{"k":"noop","d":{"a":"x|y"},"p":5,"m":3,"t":1000}"#;

    #[test]
    fn compact_records_decode_in_every_state() {
        let queued = format!("*{ID}|1700000000000|5|3|{SPEC}");
        let job = decode_compact(ID, "q", &queued, None).unwrap();
        assert_eq!(
            (job.state, job.attempts, job.priority),
            (JobState::Queued, 0, 5)
        );
        assert_eq!(job.created_at, 1_700_000_000_000);
        assert_eq!(job.enqueued_at, Some(job.created_at));
        assert_eq!(job.payload["a"], "x|y");
        // A worker id may hold '|': its length is recorded before it.
        let running = format!("r1700000000500|5|w|1|2{queued}");
        let job = decode_compact(ID, "q", &running, None).unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Running, 1));
        assert_eq!(job.worker.as_deref(), Some("w|1|2"));
        assert_eq!(job.started_at, Some(1_700_000_000_500));
        // Running while held by a batch: the token is "seq|started|worker".
        let mut job = decode_compact(ID, "q", &queued, Some("42|1700000000500|w|1|2")).unwrap();
        assert_eq!((job.state, job.attempts), (JobState::Running, 1));
        assert_eq!(job.worker.as_deref(), Some("w|1|2"));
        assert_eq!(job.started_at, Some(1_700_000_000_500));
        apply_fin(&mut job, r#"1700000000900|{"ok":1}"#);
        assert_eq!(job.state, JobState::Succeeded);
        assert_eq!(job.finished_at, Some(1_700_000_000_900));
        assert_eq!(job.result, Some(serde_json::json!({"ok": 1})));
        // A compact job that succeeded: its record is queued again, `fin` says where it ran.
        let mut job = decode_compact(ID, "q", &queued, None).unwrap();
        apply_fin(&mut job, r#"1700000000900|@1700000000500|5|w|1|2|{"ok":2}"#);
        assert_eq!((job.state, job.attempts), (JobState::Succeeded, 1));
        assert_eq!(job.worker.as_deref(), Some("w|1|2"));
        assert_eq!(job.started_at, Some(1_700_000_000_500));
        assert_eq!(job.result, Some(serde_json::json!({"ok": 2})));
        let mut job = decode_compact(ID, "q", &queued, None).unwrap();
        apply_fin(&mut job, "1700000000900|@1700000000500|1|w");
        assert_eq!((job.attempts, job.result.clone()), (1, None));
        assert!(decode_compact(ID, "q", "r12|99|short", None).is_err());
        assert!(decode_compact(ID, "q", "garbage", None).is_err());
    }

    #[test]
    fn fetched_elements_of_both_kinds_decode() {
        let compact = format!("*{ID}|1700000000000|5|3|{SPEC}");
        let job = decode_fetched("q", "w", 1_700_000_000_100, &compact).unwrap();
        assert_eq!((job.id.as_str(), job.attempts), (ID, 1));
        assert_eq!(job.run_at, Some(1_700_000_000_000));
        let hashed = format!("{ID}|2|1700000000000|1700000000050|1700000000040|{SPEC}");
        let job = decode_fetched("q", "w", 1_700_000_000_100, &hashed).unwrap();
        assert_eq!(job.attempts, 3);
        assert_eq!(job.enqueued_at, Some(1_700_000_000_050));
        assert_eq!(job.run_at, Some(1_700_000_000_040));
        assert_eq!(element_id(&compact), ID);
        assert_eq!(element_id(&hashed), ID);
        assert_eq!(element_id(ID), ID);
    }
}
