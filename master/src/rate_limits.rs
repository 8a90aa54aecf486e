//! Mesos' framework rate limiting (`--rate-limits`, Mesos' `RateLimits` JSON): the
//! master handles the scheduler calls of each principal at most `qps` a second,
//! holding the rest back in arrival order; past `capacity` calls held back, it
//! refuses the next (429, gRPC RESOURCE_EXHAUSTED) and counts it. Principals the file
//! does not list share one aggregate limit, `aggregate_default_qps`.
//!
//! The principal is the one the scheduler realm authenticated. Without
//! `--authenticate-frameworks` no caller is anyone, so every call counts against the
//! aggregate limit: a principal a caller merely claims in its FrameworkInfo would let
//! it pick a listed, unthrottled principal.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::error::CallError;

/// Mesos' `RateLimits`, as the file holds it.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimits {
    #[serde(default)]
    pub limits: Vec<RateLimit>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_default_qps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_default_capacity: Option<u64>,
}

/// Mesos' `RateLimit`: no `qps` means not throttled (and `capacity` is ignored).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub principal: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub qps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u64>,
}

#[derive(Debug, Error)]
pub enum RateLimitsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is not Mesos' RateLimits JSON: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    #[error("{what}: qps must be a number of at least one a day (1.2e-5), not {qps}")]
    BadQps { what: String, qps: f64 },
    #[error("principal {0:?} is listed twice")]
    Duplicate(String),
    #[error("a limit names an empty principal")]
    EmptyPrincipal,
}

impl RateLimits {
    pub fn load(path: &Path) -> Result<Self, RateLimitsError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| RateLimitsError::Read {
            path: shown.clone(),
            source,
        })?;
        let limits: RateLimits =
            serde_json::from_slice(&text).map_err(|source| RateLimitsError::Parse {
                path: shown,
                source,
            })?;
        limits.check()?;
        Ok(limits)
    }

    fn check(&self) -> Result<(), RateLimitsError> {
        let bad = |qps: f64| !(qps.is_finite() && qps >= MIN_QPS);
        let mut seen = std::collections::HashSet::new();
        for l in &self.limits {
            if l.principal.is_empty() {
                return Err(RateLimitsError::EmptyPrincipal);
            }
            if !seen.insert(&l.principal) {
                return Err(RateLimitsError::Duplicate(l.principal.clone()));
            }
            if let Some(qps) = l.qps.filter(|q| bad(*q)) {
                let what = format!("principal {:?}", l.principal);
                return Err(RateLimitsError::BadQps { what, qps });
            }
        }
        if let Some(qps) = self.aggregate_default_qps.filter(|q| bad(*q)) {
            let what = "aggregate_default_qps".to_owned();
            return Err(RateLimitsError::BadQps { what, qps });
        }
        Ok(())
    }
}

/// One throttled principal (or the aggregate): its calls queue in arrival order
/// (tokio's mutex is fair) for `next`, and a call's time is taken only once it is
/// served, so one that gives up while it waits (a client's deadline) costs the
/// others nothing.
#[derive(Debug)]
struct Bucket {
    interval: Duration,
    capacity: Option<u64>,
    /// When the next call may be served.
    next: std::sync::Mutex<Instant>,
    /// The queue's head: the one call waiting for `next`.
    queue: tokio::sync::Mutex<()>,
    /// Calls waiting, for the capacity check.
    waiting: AtomicU64,
}

impl Bucket {
    /// Takes the next slot if `may(next, now)`: only then is time taken, so a caller
    /// gone while it waited took none.
    fn take(&self, may: impl Fn(Instant, Instant) -> bool) -> bool {
        let mut next = self.next.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if !may(*next, now) {
            return false;
        }
        *next = (*next).max(now) + self.interval;
        true
    }

    fn new(qps: f64, capacity: Option<u64>) -> Self {
        Bucket {
            // `check` keeps qps at or above MIN_QPS, so this is at most a day.
            interval: Duration::from_secs_f64(1.0 / qps.max(MIN_QPS)),
            capacity,
            next: std::sync::Mutex::new(Instant::now()),
            queue: tokio::sync::Mutex::new(()),
            waiting: AtomicU64::new(0),
        }
    }
}

/// How far ahead of now urgent calls may book the bucket: a second of calls may go at
/// once, and the calls queued behind them wait that much longer.
const URGENT_BURST: Duration = Duration::from_secs(1);

/// The slowest rate a limit may name: one call a day.
const MIN_QPS: f64 = 1.0 / 86_400.0;

/// The name the aggregate limit goes by in refusals and metrics.
const AGGREGATE: &str = "(aggregate default)";

/// The limits in force: handed every scheduler call before the leader sees it.
#[derive(Debug, Default)]
pub struct Limiter {
    /// Listed principals; `None`: listed without a rate, never throttled.
    principals: HashMap<String, Option<Bucket>>,
    aggregate: Option<Bucket>,
    delayed: AtomicU64,
    refused: AtomicU64,
}

/// Counts a call as waiting until it is served or its caller gives up.
struct Waiting<'a>(&'a AtomicU64);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Limiter {
    pub fn new(limits: &RateLimits) -> Self {
        let principals = limits
            .limits
            .iter()
            .map(|l| {
                (
                    l.principal.clone(),
                    l.qps.map(|q| Bucket::new(q, l.capacity)),
                )
            })
            .collect();
        let aggregate = limits
            .aggregate_default_qps
            .map(|q| Bucket::new(q, limits.aggregate_default_capacity));
        Limiter {
            principals,
            aggregate,
            ..Default::default()
        }
    }

    /// Waits for this principal's next slot; refuses the call at once when its
    /// bucket already holds `capacity` calls back. An `urgent` call (one that gives
    /// resources back or puts them to use: ACCEPT, DECLINE) goes before those queued,
    /// within [`URGENT_BURST`]: holding it back would hold the resources back from
    /// every tenant.
    pub async fn admit(&self, principal: Option<&str>, urgent: bool) -> Result<(), CallError> {
        let (name, bucket) = match principal.and_then(|p| self.principals.get_key_value(p)) {
            Some((_, None)) => return Ok(()),
            Some((name, Some(bucket))) => (name.as_str(), bucket),
            None => match &self.aggregate {
                Some(bucket) => (AGGREGATE, bucket),
                None => return Ok(()),
            },
        };
        let waiting = bucket.waiting.fetch_add(1, Ordering::Relaxed);
        let _waiting = Waiting(&bucket.waiting);
        if let Some(capacity) = bucket.capacity
            && waiting >= capacity
        {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(CallError::Throttled {
                principal: name.to_owned(),
                capacity,
            });
        }
        if urgent && bucket.take(|next, now| next <= now + URGENT_BURST) {
            return Ok(());
        }
        let _head = bucket.queue.lock().await;
        let mut delayed = false;
        // Urgent calls may book the slot this one waits for: it waits again.
        while !bucket.take(|next, now| next <= now) {
            if !delayed {
                self.delayed.fetch_add(1, Ordering::Relaxed);
                delayed = true;
            }
            let next = *bucket.next.lock().unwrap_or_else(|e| e.into_inner());
            tokio::time::sleep_until(next).await;
        }
        Ok(())
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        format!(
            "# HELP cairn_master_calls_throttled_total Scheduler calls held back or refused \
             by --rate-limits.\n# TYPE cairn_master_calls_throttled_total counter\n\
             cairn_master_calls_throttled_total{{result=\"delayed\"}} {}\n\
             cairn_master_calls_throttled_total{{result=\"refused\"}} {}\n",
            self.delayed.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests;
