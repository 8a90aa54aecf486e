//! The agent's metrics, in Prometheus' text exposition format on `/metrics`: what its
//! tasks used (from the usage every executor reports in a task's terminal update) and
//! how its status update manager and checkpoint are doing.

use std::collections::BTreeMap;
use std::fmt::Write;

use cairn_api::v1::TaskStatus;

#[derive(Debug, Clone, Default)]
pub struct Metrics {
    /// Terminal updates recorded, by (state, reason).
    pub terminal: BTreeMap<(String, String), u64>,
    pub fuel_consumed: u64,
    pub wall_ms: u64,
    pub peak_memory_sum: u64,
    pub peak_memory_max: u64,
    /// Terminal updates that carried usage.
    pub accounted: u64,
    pub checkpoint_commits: u64,
    pub checkpoint_records: u64,
    pub checkpoint_failures: u64,
}

impl Metrics {
    /// Counts a terminal update, with the usage its labels report.
    pub fn task_ended(&mut self, status: &TaskStatus) {
        let state = cairn_api::v1::TaskState::try_from(status.state)
            .map(|s| s.as_str_name())
            .unwrap_or("TASK_UNKNOWN");
        let reason = status
            .reason
            .and_then(|r| cairn_api::v1::task_status::Reason::try_from(r).ok())
            .map(|r| r.as_str_name())
            .unwrap_or("");
        *self
            .terminal
            .entry((state.to_owned(), reason.to_owned()))
            .or_default() += 1;
        let usage = |key: &str| {
            status
                .labels
                .as_ref()?
                .labels
                .iter()
                .find(|l| l.key == key)?
                .value
                .parse::<u64>()
                .ok()
        };
        if let Some(fuel) = usage("cairn.usage.fuel_consumed") {
            self.fuel_consumed = self.fuel_consumed.saturating_add(fuel);
            self.accounted += 1;
        }
        if let Some(ms) = usage("cairn.usage.wall_time_ms") {
            self.wall_ms = self.wall_ms.saturating_add(ms);
        }
        if let Some(peak) = usage("cairn.usage.peak_memory_bytes") {
            self.peak_memory_sum = self.peak_memory_sum.saturating_add(peak);
            self.peak_memory_max = self.peak_memory_max.max(peak);
        }
    }
}

/// Live gauges read from the agent's state when the metrics are published.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub tasks: usize,
    pub executors: usize,
    pub pending_updates: usize,
}

/// Renders the text exposition format (version 0.0.4).
// Kept whole: a table of metric families, one entry each, read top to bottom.
pub fn render(m: &Metrics, g: &Gauges) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: &[(String, String)]| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let one = |v: String| vec![(String::new(), v)];
    let terminal: Vec<(String, String)> = m
        .terminal
        .iter()
        .map(|((state, reason), n)| {
            (
                format!("{{state=\"{state}\",reason=\"{reason}\"}}"),
                n.to_string(),
            )
        })
        .collect();
    family(
        "cairn_agent_tasks_terminal_total",
        "counter",
        "Tasks that reached a terminal state on this agent.",
        &terminal,
    );
    family(
        "cairn_agent_task_fuel_consumed_total",
        "counter",
        "Fuel the agent's wasm tasks consumed.",
        &one(m.fuel_consumed.to_string()),
    );
    family(
        "cairn_agent_task_wall_seconds_total",
        "counter",
        "Wall-clock time the agent's wasm tasks ran.",
        &one(format!("{:.3}", m.wall_ms as f64 / 1000.0)),
    );
    family(
        "cairn_agent_task_peak_memory_bytes",
        "summary",
        "Peak linear memory of the agent's wasm tasks.",
        &[
            ("_sum".into(), m.peak_memory_sum.to_string()),
            ("_count".into(), m.accounted.to_string()),
        ],
    );
    family(
        "cairn_agent_task_peak_memory_bytes_max",
        "gauge",
        "The largest peak linear memory of any task so far.",
        &one(m.peak_memory_max.to_string()),
    );
    family(
        "cairn_agent_tasks",
        "gauge",
        "Tasks the agent knows (live, or terminal and not yet acknowledged).",
        &one(g.tasks.to_string()),
    );
    family(
        "cairn_agent_executors",
        "gauge",
        "Executor processes.",
        &one(g.executors.to_string()),
    );
    family(
        "cairn_agent_status_updates_pending",
        "gauge",
        "Status updates not yet acknowledged by their framework.",
        &one(g.pending_updates.to_string()),
    );
    family(
        "cairn_agent_checkpoint_commits_total",
        "counter",
        "Synced checkpoint batches (one fsync each).",
        &one(m.checkpoint_commits.to_string()),
    );
    family(
        "cairn_agent_checkpoint_records_total",
        "counter",
        "Checkpoint records made durable.",
        &one(m.checkpoint_records.to_string()),
    );
    family(
        "cairn_agent_checkpoint_failures_total",
        "counter",
        "Checkpoint writes that failed (and were retried).",
        &one(m.checkpoint_failures.to_string()),
    );
    out
}
