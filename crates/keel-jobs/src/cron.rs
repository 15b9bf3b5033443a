//! Cron schedules: parsing (5 or 6 fields, IANA time zone), due ticks, and the leader loop that
//! fires them exactly once per tick across any number of masters.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use keel_core::Shutdown;

use crate::engine::Engine;
use crate::model::{now_ms, MissedPolicy, Schedule};

/// A parsed schedule expression.
#[derive(Clone, Debug)]
pub struct CronSpec {
    cron: Cron,
    tz: Tz,
}

impl CronSpec {
    /// Parses `expr` (5 fields, or 6 with seconds first) in time zone `tz`.
    pub fn parse(expr: &str, tz: &str) -> Result<Self, String> {
        let fields = expr.split_whitespace().count();
        if !(5..=6).contains(&fields) {
            return Err(format!(
                "cron {expr:?} has {fields} fields; expected 5 (minute precision) or 6 (with seconds)"
            ));
        }
        let cron = Cron::from_str(expr).map_err(|e| format!("cron {expr:?}: {e}"))?;
        let tz: Tz = tz.parse().map_err(|_| {
            format!("unknown time zone {tz:?} (use an IANA name like Europe/Paris)")
        })?;
        Ok(Self { cron, tz })
    }

    /// Fire times `t` with `after < t <= until` (ms), oldest first, at most `max`.
    pub fn ticks_between(&self, after: i64, until: i64, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        // Cron has one-second resolution: start from the whole second.
        let Some(mut cursor) = self.tz.timestamp_opt(after.div_euclid(1000), 0).single() else {
            return out;
        };
        while out.len() < max {
            let Ok(next) = self.cron.find_next_occurrence(&cursor, false) else {
                break;
            };
            let ms = next.timestamp() * 1000;
            if ms > until {
                break;
            }
            out.push(ms);
            cursor = next;
        }
        out
    }

    /// The next fire time after `after` (ms).
    pub fn next_after(&self, after: i64) -> Option<i64> {
        let cursor = self.tz.timestamp_opt(after.div_euclid(1000), 0).single()?;
        self.cron
            .find_next_occurrence(&cursor, false)
            .ok()
            .map(|t| t.timestamp() * 1000)
    }
}

/// Checks a schedule before it is stored.
pub fn validate_schedule(schedule: &Schedule) -> Result<(), String> {
    if schedule.name.is_empty()
        || schedule.name.len() > 100
        || !schedule
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        return Err("schedule name must be 1 to 100 letters, digits, '_', '-' or '.'".into());
    }
    CronSpec::parse(&schedule.cron, &schedule.timezone)?;
    schedule.job.validate()
}

/// Cron loop settings.
#[derive(Clone, Debug)]
pub struct CronConfig {
    /// This master's id in the leader lease.
    pub node_id: String,
    /// Leader lease; a dead leader is replaced within this time.
    pub leader_ttl: Duration,
    /// Loop period (renewal and tick evaluation).
    pub interval: Duration,
    /// A tick later than this is "missed" and follows the schedule's policy.
    pub grace: Duration,
}

impl Default for CronConfig {
    fn default() -> Self {
        Self {
            node_id: crate::worker::default_worker_id(),
            leader_ttl: Duration::from_secs(5),
            interval: Duration::from_millis(200),
            grace: Duration::from_secs(2),
        }
    }
}

/// Runs until shutdown: renews (or seeks) leadership; while leader, fires due ticks.
pub async fn run_cron(engine: Arc<dyn Engine>, config: CronConfig, shutdown: Shutdown) {
    let mut leader_token: Option<u64> = None;
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait() => break,
        }
        let token = match engine
            .acquire_leadership(&config.node_id, config.leader_ttl)
            .await
        {
            Ok(token) => token,
            Err(e) => {
                tracing::warn!(error = %e, "leader election failed");
                None
            }
        };
        if token != leader_token {
            match token {
                Some(t) => tracing::info!(node = %config.node_id, token = t, "became cron leader"),
                None if leader_token.is_some() => {
                    tracing::warn!(node = %config.node_id, "lost cron leadership")
                }
                None => {}
            }
            metrics::gauge!("keel_jobs_cron_leader").set(if token.is_some() { 1.0 } else { 0.0 });
            leader_token = token;
        }
        if let Some(token) = token {
            if let Err(e) = fire_due(&*engine, &config, token).await {
                tracing::warn!(error = %e, "cron evaluation failed");
            }
        }
    }
    if leader_token.is_some() {
        let _ = engine.resign_leadership(&config.node_id).await;
    }
}

async fn fire_due(
    engine: &dyn Engine,
    config: &CronConfig,
    token: u64,
) -> Result<(), crate::engine::EngineError> {
    let now = now_ms();
    let grace = config.grace.as_millis() as i64;
    for schedule in engine.schedules().await? {
        let spec = match CronSpec::parse(&schedule.cron, &schedule.timezone) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(schedule = %schedule.name, error = %e, "invalid schedule skipped");
                continue;
            }
        };
        let last = match engine.last_fire(&schedule.name).await? {
            Some(last) => last,
            None => now,
        };
        let ticks = spec.ticks_between(last, now, 100_000);
        let Some(&latest) = ticks.last() else {
            continue;
        };
        let (late, on_time): (Vec<i64>, Vec<i64>) = ticks.iter().partition(|&&t| now - t > grace);
        let mut to_fire = Vec::new();
        if let Some(&latest_late) = late.last() {
            match schedule.missed {
                MissedPolicy::Skip => {
                    tracing::info!(schedule = %schedule.name, missed = late.len(), "missed ticks skipped");
                    metrics::counter!("keel_jobs_cron_missed_total", "schedule" => schedule.name.clone())
                        .increment(late.len() as u64);
                    if on_time.is_empty() {
                        engine
                            .skip_fire(&config.node_id, token, &schedule.name, latest)
                            .await?;
                    }
                }
                MissedPolicy::Once => {
                    tracing::info!(schedule = %schedule.name, missed = late.len(), "missed ticks: one catch-up run");
                    to_fire.push(latest_late);
                }
            }
        }
        to_fire.extend(on_time);
        for tick in to_fire {
            if !engine
                .claim_fire(&config.node_id, token, &schedule.name, tick)
                .await?
            {
                continue;
            }
            // The job's run_at records the tick it fires for.
            let mut job = schedule.job.clone();
            job.run_at = Some(tick);
            job.delay_ms = 0;
            let enqueued = engine.enqueue(vec![job]).await?;
            metrics::counter!("keel_jobs_cron_fired_total", "schedule" => schedule.name.clone())
                .increment(1);
            tracing::info!(
                schedule = %schedule.name,
                tick = %Utc.timestamp_millis_opt(tick).single().map(|t| t.to_rfc3339()).unwrap_or_default(),
                job = ?enqueued.first().map(|e| &e.id),
                "cron fired"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_fields_with_time_zones() {
        let every_second = CronSpec::parse("* * * * * *", "UTC").unwrap();
        assert_eq!(
            every_second.ticks_between(0, 3000, 100),
            vec![1000, 2000, 3000]
        );
        let hourly = CronSpec::parse("0 * * * *", "UTC").unwrap();
        assert_eq!(
            hourly.ticks_between(0, 7_200_000, 100),
            vec![3_600_000, 7_200_000]
        );
        // Epoch is 01:00 in Paris (CET, +1): the next 03:00 there is 02:00 UTC the same day.
        let paris = CronSpec::parse("0 3 * * *", "Europe/Paris").unwrap();
        assert_eq!(paris.next_after(0), Some(2 * 3_600_000));
        assert!(CronSpec::parse("* * *", "UTC").is_err());
        assert!(CronSpec::parse("* * * * *", "Mars/Olympus").is_err());
        assert!(CronSpec::parse("61 * * * *", "UTC").is_err());
    }
}
