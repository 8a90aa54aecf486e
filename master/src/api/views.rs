//! What a caller may see of the master's state: the frameworks and tasks its
//! `view_frameworks` and `view_tasks` grants allow (Mesos filters its GETs so).

use std::sync::Arc;

use crate::authz::{Acls, Action, Entity};
use crate::leader::MasterSnapshot;

/// `snapshot` as `principal` may see it. Without view rules that could refuse
/// anything, the snapshot itself.
pub(super) fn visible(
    snapshot: Arc<MasterSnapshot>,
    acls: &Acls,
    principal: Option<&str>,
) -> Arc<MasterSnapshot> {
    if !acls.may_refuse(Action::ViewFrameworks) && !acls.may_refuse(Action::ViewTasks) {
        return snapshot;
    }
    let may = |action, user: &str| {
        let object = match user {
            "" => Entity::ANY,
            user => Entity::one(user),
        };
        acls.check(principal, action, &object).is_ok()
    };
    let mut seen = (*snapshot).clone();
    seen.frameworks
        .retain(|f| may(Action::ViewFrameworks, &f.user));
    seen.tasks.retain(|t| may(Action::ViewTasks, &t.user));
    seen.completed_tasks
        .retain(|t| may(Action::ViewTasks, &t.user));
    for role in &mut seen.roles {
        role.frameworks
            .retain(|id| seen.frameworks.iter().any(|f| f.id == *id));
    }
    Arc::new(seen)
}
