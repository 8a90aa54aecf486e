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
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Entity {
    Some {
        values: Vec<String>,
    },
    Kind {
        #[serde(rename = "type")]
        kind: EntityKind,
    },
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

/// One rule: its subject, and its object under the action's own name for it.
#[derive(Debug, Clone, Deserialize)]
struct Rule {
    principals: Entity,
    #[serde(
        alias = "roles",
        alias = "users",
        alias = "framework_principals",
        alias = "agents"
    )]
    object: Entity,
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
    /// UPDATE_QUOTA of a role (object: `roles`).
    UpdateQuota,
    /// MARK_AGENT_GONE (object: `agents`).
    MarkAgentGone,
    /// A native task run as a user (object: `users`).
    LaunchNative,
    /// A Docker task run as a user (object: `users`).
    LaunchDocker,
    /// A task run as root (object: `users`).
    RunAsRoot,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::RegisterFrameworks => "register_frameworks",
            Action::RunTasks => "run_tasks",
            Action::TeardownFrameworks => "teardown_frameworks",
            Action::UpdateWeights => "update_weights",
            Action::UpdateQuota => "update_quota",
            Action::MarkAgentGone => "mark_agent_gone",
            Action::LaunchNative => "launch_native",
            Action::LaunchDocker => "launch_docker",
            Action::RunAsRoot => "run_as_root",
        }
    }
}

/// Mesos' ACL JSON, with Cairn's actions beside Mesos'. Actions the master does not
/// check yet are read (so a Mesos file loads) and kept for later.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Acls {
    permissive: Option<bool>,
    register_frameworks: Vec<Rule>,
    run_tasks: Vec<Rule>,
    teardown_frameworks: Vec<Rule>,
    update_weights: Vec<Rule>,
    update_quota: Vec<Rule>,
    mark_agent_gone: Vec<Rule>,
    launch_native: Vec<Rule>,
    launch_docker: Vec<Rule>,
    run_as_root: Vec<Rule>,
    #[serde(flatten)]
    others: std::collections::HashMap<String, serde_json::Value>,
}

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
        const MESOS_ONLY: [&str; 4] = [
            "view_frameworks",
            "view_tasks",
            "access_sandboxes",
            "get_endpoints",
        ];
        if let Some(unknown) = acls
            .others
            .keys()
            .find(|k| !MESOS_ONLY.contains(&k.as_str()))
        {
            return Err(format!("unknown ACL action {unknown:?}"));
        }
        Ok(acls)
    }

    fn rules(&self, action: Action) -> &[Rule] {
        match action {
            Action::RegisterFrameworks => &self.register_frameworks,
            Action::RunTasks => &self.run_tasks,
            Action::TeardownFrameworks => &self.teardown_frameworks,
            Action::UpdateWeights => &self.update_weights,
            Action::UpdateQuota => &self.update_quota,
            Action::MarkAgentGone => &self.mark_agent_gone,
            Action::LaunchNative => &self.launch_native,
            Action::LaunchDocker => &self.launch_docker,
            Action::RunAsRoot => &self.run_as_root,
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
            .find(|rule| rule.principals.matches(&subject) && rule.object.matches(object))
            .map(|rule| rule.principals.allows(&subject) && rule.object.allows(object));
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

#[cfg(test)]
mod tests;
