//! The agent's HTTP API: `/health`, `/state`, and `/files/read` for task sandboxes.
//! Everything but `/health` is in the readonly realm and shows a caller only what
//! its grants allow (see [`access`]).

mod access;

use std::path::{Component, Path};
use std::sync::Arc;

use axum::Router;
use axum::extract::{Extension, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use cairn_sandbox::{SandboxDir, SandboxDirError};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::core::AgentSnapshot;

/// The most one `/files/read` returns, as Mesos pages its sandbox reads.
const MAX_READ: u64 = 1 << 20;

pub use access::Access;
use access::Caller;

#[derive(Clone)]
struct HttpState {
    snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    core: tokio::sync::mpsc::Sender<crate::input::Input>,
    paths: crate::paths::Paths,
    access: Access,
}

impl HttpState {
    /// The agent's state as of every input its core handled before this call, or
    /// the last published one if the core is too busy to answer within a second.
    async fn snapshot(&self) -> Arc<AgentSnapshot> {
        let (reply, done) = tokio::sync::oneshot::channel();
        if self
            .core
            .try_send(crate::input::Input::Publish(reply))
            .is_ok()
        {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(1), done).await;
        }
        self.snapshot.borrow().clone()
    }
}

pub fn router(
    snapshot: watch::Receiver<Arc<AgentSnapshot>>,
    core: tokio::sync::mpsc::Sender<crate::input::Input>,
    paths: crate::paths::Paths,
    access: Access,
) -> Router {
    let state = HttpState {
        snapshot,
        core,
        paths,
        access: access.clone(),
    };
    Router::new()
        .route("/metrics", get(metrics))
        .route("/state", get(state_json))
        .route("/monitor/statistics", get(statistics))
        .route("/files/read", get(read))
        .layer(axum::middleware::from_fn_with_state(
            access,
            access::authenticate,
        ))
        .route("/health", get(health))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such endpoint\n") })
        .with_state(state)
}

/// Healthy while the agent can keep its promises: an unwritable checkpoint holds
/// every update and launch back, and says so here.
async fn health(State(s): State<HttpState>) -> Response {
    let snap = s.snapshot().await;
    match &snap.checkpoint_error {
        None => "ok\n".into_response(),
        Some(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("cannot write the checkpoint: {e}\n"),
        )
            .into_response(),
    }
}

async fn metrics(
    State(s): State<HttpState>,
    Extension(Caller(principal)): Extension<Caller>,
) -> Response {
    let path = cairn_api::authz::Entity::one("/metrics");
    let allowed = (s.access.acls).check(
        principal.as_deref(),
        cairn_api::authz::Action::GetEndpoints,
        &path,
    );
    if let Err(refused) = allowed {
        return bad(StatusCode::FORBIDDEN, format!("{refused}"));
    }
    let snap = s.snapshot().await;
    let gauges = crate::metrics::Gauges {
        tasks: snap.tasks.len(),
        executors: snap.executors.len(),
        pending_updates: snap.pending_updates,
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        crate::metrics::render(&snap.metrics, &gauges),
    )
        .into_response()
}

async fn state_json(
    State(s): State<HttpState>,
    Extension(Caller(principal)): Extension<Caller>,
) -> Json<serde_json::Value> {
    let snap = s.access.visible(s.snapshot().await, principal.as_deref());
    Json(json!({
        "version": cairn_api::VERSION,
        "id": snap.agent_id,
        "master_connected": snap.master_connected,
        "tasks": snap.tasks,
        "completed_tasks": snap.completed_tasks,
        "pending_updates": snap.pending_updates,
        "executors": snap.executors,
        "checkpoint_error": snap.checkpoint_error,
    }))
}

/// Mesos' `/monitor/statistics`: one entry per running native or Docker task (each is
/// its own container, as under Mesos' command executor, so `executor_id` is the task's
/// id). CPU time is reported whole, as user time.
async fn statistics(
    State(s): State<HttpState>,
    Extension(Caller(principal)): Extension<Caller>,
) -> Json<serde_json::Value> {
    let snap = s.access.visible(s.snapshot().await, principal.as_deref());
    let entries: Vec<serde_json::Value> = snap
        .statistics
        .iter()
        .map(|t| {
            json!({
                "executor_id": t.task_id,
                "executor_name": "",
                "framework_id": t.framework_id,
                "source": t.task_id,
                "statistics": {
                    "timestamp": t.timestamp,
                    "cpus_user_time_secs": t.usage.cpu_time_secs,
                    "cpus_system_time_secs": 0.0,
                    "mem_rss_bytes": t.usage.mem_bytes,
                    "processes": t.usage.processes,
                }
            })
        })
        .collect();
    Json(json!(entries))
}

#[derive(Deserialize)]
struct ReadQuery {
    framework_id: String,
    task_id: String,
    /// A path relative to the task's sandbox, e.g. `stdout`.
    path: String,
    #[serde(default)]
    offset: u64,
    length: Option<u64>,
}

fn bad(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

/// Reads part of a file in a task's sandbox; answers `{"data", "offset"}` like Mesos.
async fn read(
    State(s): State<HttpState>,
    Extension(Caller(principal)): Extension<Caller>,
    Query(q): Query<ReadQuery>,
) -> Response {
    if !cairn_api::ids::is_safe_id(&q.framework_id) || !cairn_api::ids::is_safe_id(&q.task_id) {
        return bad(
            StatusCode::BAD_REQUEST,
            "framework_id and task_id must be valid ids".into(),
        );
    }
    // The live task, else its last completed run. A task the agent no longer lists has no known user: only a grant for ANY
    // user opens its sandbox.
    let snap = s.snapshot().await;
    let is_it =
        |t: &&crate::core::TaskView| t.framework_id == q.framework_id && t.task_id == q.task_id;
    let task = (snap.tasks.iter().find(is_it)).or_else(|| snap.completed_tasks.iter().rfind(is_it));
    let user = task.map_or("", |t| t.user.as_str());
    let principal = principal.as_deref();
    if !(s.access).may(principal, cairn_api::authz::Action::AccessSandboxes, user) {
        let who = principal.map_or("an unauthenticated caller".into(), |p| {
            format!("principal '{p}'")
        });
        return bad(
            StatusCode::FORBIDDEN,
            format!(
                "{who} may not read the sandbox of task {} (the agent's --acls: access_sandboxes)",
                q.task_id
            ),
        );
    }
    let relative = Path::new(&q.path);
    if q.path.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_)))
    {
        return bad(
            StatusCode::BAD_REQUEST,
            format!("path {:?} must stay inside the sandbox", q.path),
        );
    }
    let not_found = || {
        bad(
            StatusCode::NOT_FOUND,
            format!("no file {} in task {}'s sandbox", q.path, q.task_id),
        )
    };
    // The task's newest run: a reused task id reads its current run, not an old one.
    let Some(sandbox) = s.paths.latest_run(&q.framework_id, &q.task_id) else {
        return not_found();
    };
    // The task writes its sandbox and may plant links, FIFOs or hard links there:
    // the file is opened beneath the sandbox by the kernel, following no link, and
    // must be a regular file with one link (see `cairn_sandbox::dir`). The check is
    // the open, so nothing can be swapped in between.
    let (path, offset) = (q.path.clone(), q.offset);
    let length = q.length.unwrap_or(MAX_READ).min(MAX_READ);
    let read = tokio::task::spawn_blocking(move || {
        SandboxDir::open(&sandbox)?.read(Path::new(&path), offset, length)
    })
    .await;
    match read {
        Ok(Ok(data)) => Json(json!({ "data": String::from_utf8_lossy(&data), "offset": q.offset }))
            .into_response(),
        Ok(Err(e)) => read_refused(&q, e),
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// How a refused or failed sandbox read answers, as Mesos' `/files/read` does: 404
/// for a file that is not there, 400 for one it will not serve (a link, a FIFO, a
/// directory, a hard-linked file).
fn read_refused(q: &ReadQuery, e: SandboxDirError) -> Response {
    use std::io::ErrorKind;
    match e {
        SandboxDirError::Io { source, .. }
            if matches!(
                source.kind(),
                ErrorKind::NotFound | ErrorKind::NotADirectory
            ) =>
        {
            bad(
                StatusCode::NOT_FOUND,
                format!("no file {} in task {}'s sandbox", q.path, q.task_id),
            )
        }
        SandboxDirError::Io { source, .. } => {
            bad(StatusCode::INTERNAL_SERVER_ERROR, source.to_string())
        }
        SandboxDirError::NotBeneath { .. } => bad(
            StatusCode::BAD_REQUEST,
            format!("path {:?} must stay inside the sandbox", q.path),
        ),
        e => bad(StatusCode::BAD_REQUEST, e.to_string()),
    }
}
