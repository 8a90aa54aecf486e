//! Who a task runs as, after Mesos' `--switch_user`: `CommandInfo.user`, else
//! `FrameworkInfo.user`, else the agent's `--default-user`. Root (uid 0) only where
//! the agent's `--allow-root-tasks` says so. An agent that is not root itself cannot
//! switch users: its tasks run as the agent's user, as in Mesos.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::unistd::{Gid, Uid, User};

/// The agent's rule for task users (its flags).
#[derive(Debug, Clone)]
pub struct UserPolicy {
    /// Run tasks as their named user (Mesos' `--switch_user`, on by default); off,
    /// tasks run as the agent's own user.
    pub switch_user: bool,
    /// The user of a task whose command and framework name none.
    pub default_user: String,
    /// Whether a task may run as root (uid 0).
    pub allow_root_tasks: bool,
    /// The uid the agent's compile steps run as, which no task may run as: a task
    /// sharing it could trace a compile step as it starts and forge its output.
    pub compile_uid: u32,
    /// Users looked up lately: each lookup parses the user and group databases, and
    /// an agent starting thousands of tasks a second asks for the same few users.
    pub cache: LookupCache,
}

/// Recent user lookups (found or not), each trusted for [`LOOKUP_TTL`].
#[derive(Debug, Clone, Default)]
pub struct LookupCache(Arc<Mutex<HashMap<String, Looked>>>);

/// When a name was looked up, and what was found.
type Looked = (Instant, Result<TaskUser, UserRefused>);

/// How long a looked-up user is trusted: a user added, changed or removed on the
/// agent is seen within this.
const LOOKUP_TTL: Duration = Duration::from_secs(10);

impl LookupCache {
    fn lookup(&self, name: &str) -> Result<TaskUser, UserRefused> {
        let now = Instant::now();
        let mut users = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, user)) = users.get(name)
            && now.duration_since(*at) < LOOKUP_TTL
        {
            return user.clone();
        }
        // An unknown name is remembered too: a framework naming made-up users costs
        // one database read per name and period, not one per task.
        let user = lookup(name);
        if users.len() > 1024 {
            users.retain(|_, (at, _)| now.duration_since(*at) < LOOKUP_TTL);
        }
        users.insert(name.to_owned(), (now, user.clone()));
        user
    }
}

impl Default for UserPolicy {
    fn default() -> Self {
        Self {
            switch_user: true,
            default_user: "nobody".into(),
            allow_root_tasks: false,
            compile_uid: DEFAULT_COMPILE_UID,
            cache: LookupCache::default(),
        }
    }
}

/// The uid (and gid) compile steps run as unless the agent says otherwise: one that
/// Debian and most distributions leave unassigned, next to `nobody`'s.
pub const DEFAULT_COMPILE_UID: u32 = 65533;

/// A user a task runs as, looked up on this agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups (the user's primary group included).
    pub groups: Vec<u32>,
    /// The agent must switch to this user (it is root and the user differs).
    pub switch: bool,
}

/// Why a task may not run as the user it names; the task fails with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserRefused {
    #[error("user {0:?} does not exist on this agent")]
    Unknown(String),
    #[error("cannot look up user {user:?}: {why}")]
    Lookup { user: String, why: String },
    #[error(
        "tasks may not run as root (uid 0) on this agent; it allows them with --allow-root-tasks"
    )]
    Root,
    #[error(
        "user {0:?} has the uid the agent's compile steps run as (its --compile-uid); no task may run as it"
    )]
    CompileUser(String),
}

impl UserPolicy {
    /// The user a task runs as.
    pub fn resolve(
        &self,
        command_user: Option<&str>,
        framework_user: Option<&str>,
    ) -> Result<TaskUser, UserRefused> {
        let agent_is_root = Uid::effective().is_root();
        let name = if self.switch_user && agent_is_root {
            [command_user, framework_user]
                .into_iter()
                .flatten()
                .find(|u| !u.is_empty())
                .unwrap_or(self.default_user.as_str())
                .to_owned()
        } else {
            // Not switching: the task runs as the agent does.
            current()?.name
        };
        let user = self.cache.lookup(&name)?;
        if user.uid == 0 && !self.allow_root_tasks {
            return Err(UserRefused::Root);
        }
        if user.uid == self.compile_uid && agent_is_root {
            return Err(UserRefused::CompileUser(user.name));
        }
        Ok(TaskUser {
            switch: agent_is_root && user.uid != Uid::effective().as_raw(),
            ..user
        })
    }
}

/// This process's own user, not switched to.
pub fn current() -> Result<TaskUser, UserRefused> {
    let uid = Uid::effective();
    let name = User::from_uid(uid)
        .ok()
        .flatten()
        .ok_or_else(|| UserRefused::Unknown(uid.to_string()))?
        .name;
    lookup(&name)
}

/// Looks `name` up in the system's user database (a numeric name is not a uid, as
/// in Mesos).
pub fn lookup(name: &str) -> Result<TaskUser, UserRefused> {
    let user = User::from_name(name)
        .map_err(|e| UserRefused::Lookup {
            user: name.to_owned(),
            why: e.to_string(),
        })?
        .ok_or_else(|| UserRefused::Unknown(name.to_owned()))?;
    let c_name = std::ffi::CString::new(name).map_err(|_| UserRefused::Unknown(name.to_owned()))?;
    let groups = nix::unistd::getgrouplist(&c_name, user.gid)
        .map(|g| g.into_iter().map(Gid::as_raw).collect())
        .unwrap_or_else(|_| vec![user.gid.as_raw()]);
    Ok(TaskUser {
        name: name.to_owned(),
        uid: user.uid.as_raw(),
        gid: user.gid.as_raw(),
        groups,
        switch: false,
    })
}

impl From<cairn_api::internal::RunAs> for TaskUser {
    /// The user as the agent resolved it, seen from an executor: switched to when it
    /// is not the executor's own.
    fn from(run_as: cairn_api::internal::RunAs) -> Self {
        Self {
            switch: run_as.uid != Uid::effective().as_raw(),
            name: run_as.name,
            uid: run_as.uid,
            gid: run_as.gid,
            groups: run_as.groups,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(allow_root: bool) -> UserPolicy {
        UserPolicy {
            allow_root_tasks: allow_root,
            ..UserPolicy::default()
        }
    }

    #[test]
    fn no_task_runs_as_the_compile_steps_uid() {
        if !Uid::effective().is_root() {
            return; // Only root switches users; the tests run as root here.
        }
        let nobody = lookup("nobody").unwrap();
        let p = UserPolicy {
            compile_uid: nobody.uid,
            ..UserPolicy::default()
        };
        let refused = p.resolve(Some("nobody"), None).unwrap_err();
        assert_eq!(refused, UserRefused::CompileUser("nobody".into()));
        assert!(refused.to_string().contains("--compile-uid"), "{refused}");
        assert!(policy(false).resolve(Some("nobody"), None).is_ok());
    }

    #[test]
    fn the_command_user_wins_then_the_framework_user_then_the_default() {
        if !Uid::effective().is_root() {
            return; // Only root switches users; the tests run as root here.
        }
        let p = policy(false);
        assert_eq!(
            p.resolve(Some("nobody"), Some("root")).unwrap().name,
            "nobody"
        );
        assert_eq!(p.resolve(None, Some("nobody")).unwrap().name, "nobody");
        assert_eq!(p.resolve(Some(""), Some("")).unwrap().name, "nobody");
        let nobody = p.resolve(None, None).unwrap();
        assert!(nobody.switch && nobody.uid != 0);
    }

    #[test]
    fn root_and_unknown_users_are_refused_with_a_reason() {
        if !Uid::effective().is_root() {
            return;
        }
        assert_eq!(
            policy(false).resolve(None, Some("root")),
            Err(UserRefused::Root)
        );
        assert_eq!(policy(true).resolve(None, Some("root")).unwrap().uid, 0);
        let unknown = policy(false)
            .resolve(Some("no-such-user-cairn"), None)
            .unwrap_err();
        assert_eq!(
            unknown.to_string(),
            "user \"no-such-user-cairn\" does not exist on this agent"
        );
    }
}
