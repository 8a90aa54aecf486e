//! The immutable view the leader publishes after every input, read by `/state`.

use serde::Serialize;

use super::Leader;

#[derive(Debug, Clone, Default, Serialize)]
pub struct MasterSnapshot {
    pub frameworks: Vec<FrameworkView>,
    pub agents: Vec<AgentView>,
    pub tasks: Vec<TaskView>,
    pub completed_tasks: Vec<TaskView>,
    pub outstanding_offers: usize,
    pub roles: Vec<RoleView>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RoleView {
    pub name: String,
    pub weight: f64,
    /// Resources offered or used under the role.
    pub allocated: String,
    pub frameworks: Vec<String>,
    /// Quota guarantee and limit in the resources text format ("" when none).
    pub guarantee: String,
    pub limit: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct FrameworkView {
    pub id: String,
    pub name: String,
    pub role: String,
    /// Who registered it (empty: an unauthenticated framework that named no one).
    pub principal: String,
    /// Whom its tasks run as unless they name another (`FrameworkInfo.user`).
    pub user: String,
    /// Subscribed right now (Mesos' `connected` and `active`).
    pub active: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct AgentView {
    pub id: String,
    pub hostname: String,
    pub port: i32,
    pub resources: String,
    pub used_resources: String,
    pub offered_resources: String,
    pub attributes: Vec<(String, serde_json::Value)>,
    pub active: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct TaskView {
    pub id: String,
    pub name: String,
    pub framework_id: String,
    pub agent_id: String,
    pub state: String,
    pub resources: String,
    pub message: String,
    pub reason: Option<String>,
    /// Whom it runs as (see `crate::authz::task_user`; empty: the agent's default).
    pub user: String,
}

pub(super) fn build(leader: &Leader) -> MasterSnapshot {
    let registry = leader.registry.state();
    let mut frameworks: Vec<FrameworkView> = registry
        .frameworks
        .iter()
        .map(|(id, info)| FrameworkView {
            id: id.clone(),
            name: info.name.clone(),
            role: info.role.clone(),
            principal: info.principal.clone(),
            user: info.user.clone(),
            active: leader
                .frameworks
                .get(id)
                .is_some_and(|f| f.stream.is_some()),
        })
        .collect();
    frameworks.sort_by(|a, b| a.id.cmp(&b.id));
    let mut agents: Vec<AgentView> = registry
        .agents
        .iter()
        .map(|(id, info)| {
            let live = leader.agents.get(id);
            AgentView {
                id: id.clone(),
                hostname: info.hostname.clone(),
                port: info.port,
                resources: cairn_api::Resources::from_proto(&info.resources)
                    .map(|r| r.to_string())
                    .unwrap_or_default(),
                used_resources: live.map(|a| a.used.to_string()).unwrap_or_default(),
                offered_resources: live.map(|a| a.offered.to_string()).unwrap_or_default(),
                attributes: info
                    .attributes
                    .iter()
                    .map(|a| {
                        let v = a.text.as_ref().map(|t| t.value.clone()).unwrap_or_default();
                        (a.name.clone(), serde_json::Value::String(v))
                    })
                    .collect(),
                active: live.is_some_and(|a| a.conn.is_some()),
            }
        })
        .collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let roles = role_views(leader, &registry);
    MasterSnapshot {
        roles,
        frameworks,
        agents,
        tasks: leader
            .tasks
            .values()
            .map(|t| task_view(t, &registry))
            .collect(),
        completed_tasks: (leader.completed.iter())
            .map(|t| task_view(t, &registry))
            .collect(),
        outstanding_offers: leader.offers.len(),
    }
}

/// Every role that has a framework, a weight or a quota.
fn role_views(leader: &Leader, registry: &crate::registry::RegistryState) -> Vec<RoleView> {
    use std::collections::BTreeMap;
    let mut roles: BTreeMap<String, RoleView> = BTreeMap::new();
    fn entry<'a>(
        roles: &'a mut BTreeMap<String, RoleView>,
        registry: &crate::registry::RegistryState,
        name: &str,
    ) -> &'a mut RoleView {
        roles.entry(name.to_owned()).or_insert_with(|| RoleView {
            name: name.to_owned(),
            weight: registry.weights.get(name).copied().unwrap_or(1.0),
            allocated: String::new(),
            frameworks: Vec::new(),
            guarantee: registry
                .quotas
                .get(name)
                .map(|q| q.guarantee.clone())
                .unwrap_or_default(),
            limit: registry
                .quotas
                .get(name)
                .map(|q| q.limit.clone())
                .unwrap_or_default(),
        })
    }
    for (id, fw) in &leader.frameworks {
        let mut names = fw.info.roles.clone();
        if names.is_empty() {
            names.push(fw.info.role.clone());
        }
        for name in names {
            entry(&mut roles, registry, &name)
                .frameworks
                .push(id.clone());
        }
    }
    for name in registry.weights.keys().chain(registry.quotas.keys()) {
        entry(&mut roles, registry, name);
    }
    let mut allocated: BTreeMap<String, cairn_api::Resources> = BTreeMap::new();
    for t in leader.tasks.values() {
        let a = allocated.entry(t.role.clone()).or_default();
        *a = a.add(&t.resources);
    }
    for o in leader.offers.values() {
        let a = allocated.entry(o.role.clone()).or_default();
        *a = a.add(&o.resources);
    }
    for held in leader.agents.values().flat_map(|a| a.executors.values()) {
        let a = allocated.entry(held.role.clone()).or_default();
        *a = a.add(&held.resources);
    }
    for (name, r) in allocated {
        entry(&mut roles, registry, &name).allocated = r.to_string();
    }
    roles.into_values().collect()
}

/// A task as `/state` shows it.
fn task_view(t: &super::TaskEntry, registry: &crate::registry::RegistryState) -> TaskView {
    let framework = registry.frameworks.get(&t.framework_id);
    let framework_user = framework.map_or("", |f| f.user.as_str());
    TaskView {
        user: crate::authz::task_user(framework_user, &t.info).to_owned(),
        id: t
            .info
            .task_id
            .as_ref()
            .map(|i| i.value.clone())
            .unwrap_or_default(),
        name: t.info.name.clone(),
        framework_id: t.framework_id.clone(),
        agent_id: t.agent_id.clone(),
        state: t.state.as_str_name().to_owned(),
        // The task's own, as Mesos shows them; what it is charged is in the agent's
        // and role's figures.
        resources: cairn_api::Resources::from_proto(&t.info.resources)
            .unwrap_or_default()
            .to_string(),
        message: t
            .status
            .as_ref()
            .map(|s| s.message.clone())
            .unwrap_or_default(),
        reason: t
            .status
            .as_ref()
            .and_then(|s| s.reason)
            .and_then(|r| cairn_api::v1::task_status::Reason::try_from(r).ok())
            .map(|r| r.as_str_name().to_owned()),
    }
}

/// Views built by hand, for the API's unit tests.
#[cfg(test)]
pub mod for_tests {
    use super::{FrameworkView, TaskView};

    pub fn framework(id: &str, user: &str) -> FrameworkView {
        FrameworkView {
            id: id.into(),
            name: id.into(),
            role: "*".into(),
            principal: String::new(),
            user: user.into(),
            active: true,
        }
    }

    pub fn task(id: &str, framework_id: &str, user: &str) -> TaskView {
        TaskView {
            id: id.into(),
            name: id.into(),
            framework_id: framework_id.into(),
            agent_id: "a".into(),
            state: "TASK_RUNNING".into(),
            resources: String::new(),
            message: String::new(),
            reason: None,
            user: user.into(),
        }
    }
}
