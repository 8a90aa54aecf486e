//! The audit log: every call that can change the master's state (scheduler calls,
//! operator writes, agent registrations) and every refused authentication, as one
//! structured log line under the `cairn::audit` target, with who called
//! (`principal`, `-` where the realm asks no one), the call, what it names
//! (`target`) and its result; and a counter per result, on `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::StatusCode;

/// What became of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    /// 401: the caller did not say who it is, or said it wrongly.
    Unauthenticated,
    /// 403: the caller may not do this.
    Forbidden,
    /// Another 4xx: the call is malformed or names what does not exist.
    Refused,
    /// 5xx: the master could not serve it.
    Failed,
}

impl Outcome {
    const ALL: [Outcome; 5] = [
        Outcome::Accepted,
        Outcome::Unauthenticated,
        Outcome::Forbidden,
        Outcome::Refused,
        Outcome::Failed,
    ];

    pub fn of(status: StatusCode) -> Self {
        match status.as_u16() {
            401 => Outcome::Unauthenticated,
            403 => Outcome::Forbidden,
            400..=499 => Outcome::Refused,
            500.. => Outcome::Failed,
            _ => Outcome::Accepted,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Unauthenticated => "unauthenticated",
            Outcome::Forbidden => "forbidden",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

/// The counters, shared by every API.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    counts: Arc<[AtomicU64; 5]>,
}

impl Audit {
    /// Logs one call and counts its outcome.
    pub fn record(&self, principal: Option<&str>, call: &str, target: &str, outcome: Outcome) {
        self.counts[outcome as usize].fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            target: "cairn::audit",
            principal = principal.unwrap_or("-"),
            call,
            target,
            result = outcome.name(),
            "audit"
        );
    }

    /// The counters in Prometheus' text format.
    pub fn render(&self) -> String {
        let mut out = String::from(
            "# HELP cairn_master_audit_calls_total Calls that can change state, and refused \
             authentications, by result.\n# TYPE cairn_master_audit_calls_total counter\n",
        );
        for outcome in Outcome::ALL {
            let n = self.counts[outcome as usize].load(Ordering::Relaxed);
            out.push_str(&format!(
                "cairn_master_audit_calls_total{{result=\"{}\"}} {n}\n",
                outcome.name()
            ));
        }
        out
    }
}
