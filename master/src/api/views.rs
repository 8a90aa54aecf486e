//! What a caller may see of the master's state: the frameworks, tasks, roles and
//! quotas its `view_frameworks`, `view_tasks`, `view_roles` and `get_quotas` grants
//! allow (Mesos filters its GETs so).

use std::sync::Arc;

use crate::authz::{Acls, Action, Entity};
use crate::leader::{MasterSnapshot, TaskView};

/// `snapshot` as `principal` may see it: the frameworks `view_frameworks` allows,
/// the tasks `view_tasks` and `view_frameworks` both allow, the roles `view_roles`
/// allows. Without view rules that could refuse anything, the snapshot itself.
pub(super) fn visible(
    snapshot: Arc<MasterSnapshot>,
    acls: &Acls,
    principal: Option<&str>,
) -> Arc<MasterSnapshot> {
    let filters = [Action::ViewFrameworks, Action::ViewTasks, Action::ViewRoles];
    if !filters.iter().any(|a| acls.may_refuse(*a)) {
        return snapshot;
    }
    let may =
        |action, user: &str| (acls.check(principal, action, &Entity::named_or_any(user))).is_ok();
    let mut seen = (*snapshot).clone();
    seen.frameworks
        .retain(|f| may(Action::ViewFrameworks, &f.user));
    // A task shows where both grants allow it, as in Mesos; the framework of a
    // completed task may be gone, and its user with it (only ANY allows that).
    let framework_seen = |id: &str| match snapshot.frameworks.iter().find(|f| f.id == id) {
        Some(_) => seen.frameworks.iter().any(|f| f.id == id),
        None => may(Action::ViewFrameworks, ""),
    };
    let task_seen =
        |t: &TaskView| may(Action::ViewTasks, &t.user) && framework_seen(&t.framework_id);
    let tasks: Vec<TaskView> = seen
        .tasks
        .iter()
        .filter(|t| task_seen(t))
        .cloned()
        .collect();
    let completed: Vec<TaskView> = (seen.completed_tasks.iter())
        .filter(|t| task_seen(t))
        .cloned()
        .collect();
    (seen.tasks, seen.completed_tasks) = (tasks, completed);
    seen.roles.retain(|r| {
        acls.check(principal, Action::ViewRoles, &Entity::one(&r.name))
            .is_ok()
    });
    for role in &mut seen.roles {
        role.frameworks
            .retain(|id| seen.frameworks.iter().any(|f| f.id == *id));
    }
    Arc::new(seen)
}

/// `snapshot` with the quotas of roles `get_quotas` does not allow blanked.
pub(super) fn quotas_visible(
    snapshot: Arc<MasterSnapshot>,
    acls: &Acls,
    principal: Option<&str>,
) -> Arc<MasterSnapshot> {
    if !acls.may_refuse(Action::GetQuotas) {
        return snapshot;
    }
    let mut seen = (*snapshot).clone();
    for role in &mut seen.roles {
        let object = Entity::one(&role.name);
        if acls.check(principal, Action::GetQuotas, &object).is_err() {
            (role.guarantee, role.limit) = (String::new(), String::new());
        }
    }
    Arc::new(seen)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::leader::snapshot_for_tests::{framework, task};

    #[test]
    fn a_task_shows_only_where_its_framework_shows_too() {
        let snapshot = Arc::new(MasterSnapshot {
            frameworks: vec![framework("fa", "alice-user"), framework("fb", "bob-user")],
            // A task of bob's framework that runs as alice's user.
            tasks: vec![
                task("ta", "fa", "alice-user"),
                task("tb", "fb", "alice-user"),
            ],
            ..Default::default()
        });
        let acls = Acls::parse(
            r#"{"permissive": false,
                "view_frameworks": [{"principals": {"values": ["alice"]}, "users": {"values": ["alice-user"]}}],
                "view_tasks": [{"principals": {"values": ["alice"]}, "users": {"values": ["alice-user"]}}]}"#,
        )
        .unwrap();
        let seen = visible(snapshot.clone(), &acls, Some("alice"));
        let ids: Vec<&str> = seen.tasks.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["ta"]);
        assert_eq!(seen.frameworks.len(), 1);
        let nobody = visible(snapshot, &acls, None);
        assert!(nobody.tasks.is_empty() && nobody.frameworks.is_empty());
    }
}
