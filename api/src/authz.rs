//! What a principal may do: Mesos' ACLs (`--acls`, its JSON), checked as Mesos' local
//! authorizer checks them. Each action has a list of rules, each a subject (the
//! principals) and an object (roles, users, framework principals, agents); the first
//! rule that matches the request decides, and where none does, `permissive` (true by
//! default) does. An entity is `{"values": [...]}` or `{"type": "ANY"}` / `{"type":
//! "NONE"}`: a rule whose entity is NONE matches every request and allows none, so
//! `{"principals": {"type": "NONE"}, "roles": {"values": ["prod"]}}` keeps everyone
//! not allowed by an earlier rule out of `prod`. A caller with no principal (its realm
//! asks no one) is ANY, which only ANY allows.
//!
//! Cairn's own actions take the same form: `launch_native`, `launch_docker` (objects:
//! `users`, whom the task runs as) and `run_as_root` (`users`), beside Mesos'.

use std::path::{Path, PathBuf};

use crate::v1::{FrameworkInfo, TaskInfo, container_info};
use serde::Deserialize;

/// An ACL file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AclsError {
    #[error("reading the ACL file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the ACL file {path} is not Mesos' ACL JSON: {why}")]
    Parse { path: PathBuf, why: String },
}

/// One side of a rule, or of a request: some named values, anyone, or no one.
/// Read as Mesos reads it: `type` (SOME by default) decides, and SOME needs values.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawEntity")]
pub enum Entity {
    Some { values: Vec<String> },
    Kind { kind: EntityKind },
}

/// An entity as written: `{"type": "ANY"}`, `{"values": [...]}`, or both.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntity {
    #[serde(rename = "type", default)]
    kind: Option<RawKind>,
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "UPPERCASE")]
enum RawKind {
    Some,
    Any,
    None,
}

impl TryFrom<RawEntity> for Entity {
    type Error = &'static str;

    fn try_from(raw: RawEntity) -> Result<Self, Self::Error> {
        match (raw.kind, raw.values) {
            (Some(RawKind::Any), _) => Ok(Entity::ANY),
            (Some(RawKind::None), _) => Ok(Entity::Kind {
                kind: EntityKind::None,
            }),
            (Some(RawKind::Some) | None, Some(values)) => Ok(Entity::Some { values }),
            (Some(RawKind::Some) | None, None) => {
                Err("an entity needs \"values\", or a \"type\" of ANY or NONE")
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum EntityKind {
    Any,
    None,
}

impl Entity {
    pub const ANY: Entity = Entity::Kind {
        kind: EntityKind::Any,
    };

    /// A name the request is about, or ANY where it is unknown (empty): a task naming
    /// no user, a framework registered with no principal.
    pub fn named_or_any(value: &str) -> Entity {
        match value {
            "" => Entity::ANY,
            value => Entity::one(value),
        }
    }

    /// One named value.
    pub fn one(value: &str) -> Entity {
        Entity::Some {
            values: vec![value.to_owned()],
        }
    }

    /// Whether a rule with this entity applies to `request` (NONE applies to all).
    fn matches(&self, request: &Entity) -> bool {
        match (self, request) {
            (Entity::Kind { .. }, _) => true,
            (Entity::Some { values }, Entity::Some { values: asked }) => {
                asked.iter().all(|a| values.contains(a))
            }
            (Entity::Some { .. }, Entity::Kind { .. }) => false,
        }
    }

    /// Whether a matching rule with this entity lets `request` through.
    fn allows(&self, request: &Entity) -> bool {
        match self {
            Entity::Kind { kind } => *kind == EntityKind::Any,
            Entity::Some { .. } => self.matches(request),
        }
    }
}

/// One rule: its subject, and its object under the action's own name for it
/// (`roles`, `users`, ...; see [`Action::object`]), which [`Acls::parse`] checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    principals: Entity,
    roles: Option<Entity>,
    users: Option<Entity>,
    framework_principals: Option<Entity>,
    agents: Option<Entity>,
    flags: Option<Entity>,
    paths: Option<Entity>,
}

impl Rule {
    /// The objects named, by key.
    fn objects(&self) -> [(&'static str, Option<&Entity>); 6] {
        [
            ("flags", self.flags.as_ref()),
            ("paths", self.paths.as_ref()),
            ("roles", self.roles.as_ref()),
            ("users", self.users.as_ref()),
            ("framework_principals", self.framework_principals.as_ref()),
            ("agents", self.agents.as_ref()),
        ]
    }

    /// The object of a rule for `action` (checked present at parse).
    fn object(&self, action: Action) -> &Entity {
        const NONE: Entity = Entity::Kind {
            kind: EntityKind::None,
        };
        let named = self
            .objects()
            .into_iter()
            .find(|(key, _)| *key == action.object());
        named.and_then(|(_, entity)| entity).unwrap_or(&NONE)
    }
}

/// The actions the master checks, named as in Mesos' ACL JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// SUBSCRIBE under a role (object: `roles`).
    RegisterFrameworks,
    /// A task run as a user (object: `users`).
    RunTasks,
    /// TEARDOWN of a framework registered by a principal (object: `framework_principals`).
    TeardownFrameworks,
    /// UPDATE_WEIGHTS of a role (object: `roles`).
    UpdateWeights,
    /// UPDATE_QUOTA of a role (`update_quotas`, object: `roles`).
    UpdateQuota,
    /// Seeing a framework whose tasks run as a user (object: `users`,
    /// `FrameworkInfo.user`).
    ViewFrameworks,
    /// Seeing a task run as a user (object: `users`).
    ViewTasks,
    /// Reading the sandbox of an executor run as a user (object: `users`).
    AccessSandboxes,
    /// Seeing a role, its weight and what it holds (object: `roles`).
    ViewRoles,
    /// Seeing a role's quota (object: `roles`).
    GetQuotas,
    /// Reading the daemon's flags (object: `flags`, ANY or NONE).
    ViewFlags,
    /// MARK_AGENT_GONE (object: `agents`).
    MarkAgentGone,
    /// A native task run as a user (object: `users`).
    LaunchNative,
    /// A Docker task run as a user (object: `users`).
    LaunchDocker,
    /// A task run as root (object: `users`).
    RunAsRoot,
    /// Reading an endpoint Mesos gates this way: `/metrics` here (object: `paths`).
    GetEndpoints,
}

impl Action {
    pub const ALL: [Action; 16] = [
        Action::RegisterFrameworks,
        Action::RunTasks,
        Action::TeardownFrameworks,
        Action::UpdateWeights,
        Action::UpdateQuota,
        Action::ViewFrameworks,
        Action::ViewTasks,
        Action::AccessSandboxes,
        Action::ViewRoles,
        Action::GetQuotas,
        Action::ViewFlags,
        Action::MarkAgentGone,
        Action::LaunchNative,
        Action::LaunchDocker,
        Action::RunAsRoot,
        Action::GetEndpoints,
    ];

    /// The key its rules name their object by, as in Mesos.
    pub fn object(self) -> &'static str {
        match self {
            Action::RegisterFrameworks
            | Action::UpdateWeights
            | Action::UpdateQuota
            | Action::ViewRoles
            | Action::GetQuotas => "roles",
            Action::ViewFlags => "flags",
            Action::GetEndpoints => "paths",
            Action::TeardownFrameworks => "framework_principals",
            Action::MarkAgentGone => "agents",
            _ => "users",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Action::RegisterFrameworks => "register_frameworks",
            Action::RunTasks => "run_tasks",
            Action::TeardownFrameworks => "teardown_frameworks",
            Action::UpdateWeights => "update_weights",
            Action::UpdateQuota => "update_quotas",
            Action::ViewFrameworks => "view_frameworks",
            Action::ViewTasks => "view_tasks",
            Action::AccessSandboxes => "access_sandboxes",
            Action::ViewRoles => "view_roles",
            Action::GetQuotas => "get_quotas",
            Action::ViewFlags => "view_flags",
            Action::MarkAgentGone => "mark_agents_gone",
            Action::LaunchNative => "launch_native",
            Action::LaunchDocker => "launch_docker",
            Action::RunAsRoot => "run_as_root",
            Action::GetEndpoints => "get_endpoints",
        }
    }
}

/// Mesos' ACL JSON, with Cairn's actions beside Mesos'. Mesos actions with no
/// counterpart in Cairn are read (so a Mesos file loads) and named at start.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Acls {
    permissive: Option<bool>,
    register_frameworks: Vec<Rule>,
    run_tasks: Vec<Rule>,
    teardown_frameworks: Vec<Rule>,
    update_weights: Vec<Rule>,
    /// Mesos' name; `mark_agent_gone` is read as it too.
    #[serde(alias = "mark_agent_gone")]
    mark_agents_gone: Vec<Rule>,
    /// Mesos' name; `update_quota` is read as it too.
    #[serde(alias = "update_quota")]
    update_quotas: Vec<Rule>,
    view_frameworks: Vec<Rule>,
    view_tasks: Vec<Rule>,
    access_sandboxes: Vec<Rule>,
    view_roles: Vec<Rule>,
    get_quotas: Vec<Rule>,
    view_flags: Vec<Rule>,
    launch_native: Vec<Rule>,
    launch_docker: Vec<Rule>,
    run_as_root: Vec<Rule>,
    get_endpoints: Vec<Rule>,
    #[serde(flatten)]
    others: std::collections::HashMap<String, serde_json::Value>,
}

/// Mesos' ACL actions that no Cairn call corresponds to: a Mesos file naming them
/// loads, and they allow or refuse nothing.
const UNCHECKED: [&str; 35] = [
    "reserve_resources",
    "unreserve_resources",
    "create_volumes",
    "destroy_volumes",
    "view_executors",
    "access_mesos_logs",
    "launch_nested_containers_as_user",
    "launch_nested_containers_under_parent_with_user",
    "kill_nested_containers",
    "wait_nested_containers",
    "launch_nested_container_sessions_as_user",
    "launch_nested_container_sessions_under_parent_with_user",
    "attach_containers_input",
    "attach_containers_output",
    "view_containers",
    "set_log_level",
    "remove_nested_containers",
    "register_agents",
    "update_maintenance_schedules",
    "get_maintenance_schedules",
    "start_maintenances",
    "stop_maintenances",
    "get_maintenance_statuses",
    "launch_standalone_containers",
    "kill_standalone_containers",
    "wait_standalone_containers",
    "remove_standalone_containers",
    "view_standalone_containers",
    "view_resource_providers",
    "modify_resource_provider_configs",
    "prune_images",
    "resize_volumes",
    "drain_agents",
    "deactivate_agents",
    "reactivate_agents",
];

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{who} is not authorized to {action} {object} (the master's --acls)")]
pub struct Refused {
    pub who: String,
    pub action: &'static str,
    pub object: String,
}

impl Acls {
    pub fn load(path: &Path) -> Result<Self, AclsError> {
        let text = std::fs::read_to_string(path).map_err(|source| AclsError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|why| AclsError::Parse {
            path: path.to_owned(),
            why,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let acls: Acls = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if let Some(unknown) = acls
            .others
            .keys()
            .find(|k| !UNCHECKED.contains(&k.as_str()))
        {
            return Err(format!("unknown ACL action {unknown:?}"));
        }
        for action in Action::ALL {
            for rule in acls.rules(action) {
                let named: Vec<&str> = (rule.objects().into_iter())
                    .filter_map(|(key, entity)| entity.map(|_| key))
                    .collect();
                if named != [action.object()] {
                    return Err(format!(
                        "each {} rule names its object as \"{}\" (and nothing else), not {named:?}",
                        action.name(),
                        action.object()
                    ));
                }
            }
        }
        Ok(acls)
    }

    /// The actions of the file that Cairn reads but has nothing to check against
    /// (Mesos' reservations, volumes, nested containers...), for a warning at start.
    pub fn unchecked_actions(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.others.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// Whether any request for `action` could be refused: false when no rule names
    /// it and the file is permissive, so callers can skip the checks.
    pub fn may_refuse(&self, action: Action) -> bool {
        !self.rules(action).is_empty() || self.permissive == Some(false)
    }

    fn rules(&self, action: Action) -> &[Rule] {
        match action {
            Action::RegisterFrameworks => &self.register_frameworks,
            Action::RunTasks => &self.run_tasks,
            Action::TeardownFrameworks => &self.teardown_frameworks,
            Action::UpdateWeights => &self.update_weights,
            Action::UpdateQuota => &self.update_quotas,
            Action::ViewFrameworks => &self.view_frameworks,
            Action::ViewTasks => &self.view_tasks,
            Action::AccessSandboxes => &self.access_sandboxes,
            Action::ViewRoles => &self.view_roles,
            Action::GetQuotas => &self.get_quotas,
            Action::ViewFlags => &self.view_flags,
            Action::MarkAgentGone => &self.mark_agents_gone,
            Action::LaunchNative => &self.launch_native,
            Action::LaunchDocker => &self.launch_docker,
            Action::RunAsRoot => &self.run_as_root,
            Action::GetEndpoints => &self.get_endpoints,
        }
    }

    /// Whether `principal` (none: ANY) may do `action` on `object`.
    pub fn check(
        &self,
        principal: Option<&str>,
        action: Action,
        object: &Entity,
    ) -> Result<(), Refused> {
        let subject = principal.map_or(Entity::ANY, Entity::one);
        let decided = (self.rules(action).iter())
            .find(|rule| rule.principals.matches(&subject) && rule.object(action).matches(object))
            .map(|rule| rule.principals.allows(&subject) && rule.object(action).allows(object));
        if decided.unwrap_or(self.permissive.unwrap_or(true)) {
            return Ok(());
        }
        Err(Refused {
            who: principal.map_or("an unauthenticated caller".into(), |p| {
                format!("principal '{p}'")
            }),
            action: action.name(),
            object: match object {
                Entity::Some { values } => values.join(", "),
                Entity::Kind { .. } => "any".into(),
            },
        })
    }
}

/// The user a task names: its command's, else its custom executor's, else its
/// framework's (`framework_user`). Empty when none names one; the agent then runs it
/// as its `--default-user`, which the master cannot know, so only rules for ANY user
/// allow it.
pub fn task_user<'a>(framework_user: &'a str, task: &'a TaskInfo) -> &'a str {
    let command = task
        .command
        .as_ref()
        .or(task.executor.as_ref().and_then(|e| e.command.as_ref()));
    command
        .and_then(|c| c.user.as_deref())
        .filter(|u| !u.is_empty())
        .unwrap_or(framework_user)
}

impl Acls {
    /// Whether `framework`'s principal may launch `task`: `run_tasks` as its user,
    /// `launch_native` or `launch_docker` as its kind (a wasm task needs neither),
    /// and `run_as_root` when that user is root.
    pub fn check_task(&self, framework: &FrameworkInfo, task: &TaskInfo) -> Result<(), Refused> {
        let principal = Some(framework.principal.as_str()).filter(|p| !p.is_empty());
        let user = task_user(&framework.user, task);
        let object = Entity::named_or_any(user);
        self.check(principal, Action::RunTasks, &object)?;
        let kind = crate::charges::container_type(task);
        if kind == container_info::Type::Docker as i32 {
            self.check(principal, Action::LaunchDocker, &object)?;
        } else if kind != container_info::Type::Wasm as i32 {
            self.check(principal, Action::LaunchNative, &object)?;
        }
        if user == "root" {
            self.check(principal, Action::RunAsRoot, &object)?;
        }
        Ok(())
    }

    /// Whether `framework`'s principal may register under each of its roles.
    pub fn check_roles(&self, framework: &FrameworkInfo, roles: &[String]) -> Result<(), Refused> {
        let principal = Some(framework.principal.as_str()).filter(|p| !p.is_empty());
        roles.iter().try_for_each(|role| {
            self.check(principal, Action::RegisterFrameworks, &Entity::one(role))
        })
    }
}

#[cfg(test)]
mod tests;
