//! Who calls the agent's HTTP API, and what they may see: Mesos' agent realms
//! (`mesos-agent-readonly`) and its `view_tasks`, `view_frameworks` and
//! `access_sandboxes` grants, checked against the user each task runs as.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_api::authn::{Authentication, Realm};
use cairn_api::authz::{Acls, Action, Entity};

use crate::core::AgentSnapshot;

/// The agent's authentication and ACLs.
#[derive(Clone, Default)]
pub struct Access {
    pub authentication: Authentication,
    pub acls: Arc<Acls>,
}

/// Who called, as the readonly realm authenticated them (`None`: it asks no one).
#[derive(Debug, Clone)]
pub(super) struct Caller(pub Option<String>);

/// Refuses callers who do not authenticate where the realm asks (401, with Mesos'
/// challenge), and tells handlers who the others are.
pub(super) async fn authenticate(
    State(access): State<Access>,
    mut request: Request,
    next: Next,
) -> Response {
    let authorization = request.headers().get(header::AUTHORIZATION);
    let realm = Realm::AgentReadOnly;
    match (access.authentication).principal(realm, authorization.map(HeaderValue::as_bytes)) {
        Ok(principal) => {
            request.extensions_mut().insert(Caller(principal));
            next.run(request).await
        }
        Err(e) => {
            tracing::info!(
                target: "cairn::audit",
                call = %request.uri().path(),
                result = "unauthenticated",
                "agent call refused"
            );
            let challenge = HeaderValue::from_str(&e.challenge());
            let headers = challenge.map(|v| [(header::WWW_AUTHENTICATE, v)]).ok();
            (StatusCode::UNAUTHORIZED, headers, format!("{e}\n")).into_response()
        }
    }
}

impl Access {
    /// Whether `principal` may do `action` to what runs as `user` (empty: unknown,
    /// which only a grant for ANY user allows).
    pub(super) fn may(&self, principal: Option<&str>, action: Action, user: &str) -> bool {
        (self.acls)
            .check(principal, action, &Entity::named_or_any(user))
            .is_ok()
    }

    /// `snapshot` as `principal` may see it: the tasks its `view_tasks` allows, and
    /// the executors of frameworks it sees a task of.
    pub(super) fn visible(
        &self,
        snapshot: Arc<AgentSnapshot>,
        principal: Option<&str>,
    ) -> Arc<AgentSnapshot> {
        if !self.acls.may_refuse(Action::ViewTasks) {
            return snapshot;
        }
        let mut seen = (*snapshot).clone();
        seen.tasks
            .retain(|t| self.may(principal, Action::ViewTasks, &t.user));
        seen.completed_tasks
            .retain(|t| self.may(principal, Action::ViewTasks, &t.user));
        let shown = |fw: &str, task: Option<&str>| {
            (seen.tasks.iter())
                .any(|t| t.framework_id == fw && task.is_none_or(|id| t.task_id == id))
        };
        let executors = std::mem::take(&mut seen.executors);
        seen.executors = (executors.into_iter())
            .filter(|e| shown(&e.framework_id, None))
            .collect();
        let statistics = std::mem::take(&mut seen.statistics);
        seen.statistics = (statistics.into_iter())
            .filter(|s| shown(&s.framework_id, Some(&s.task_id)))
            .collect();
        Arc::new(seen)
    }
}
