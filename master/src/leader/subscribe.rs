//! SUBSCRIBE: a framework's FrameworkInfo is checked and recorded in the registry,
//! and its event stream attached; a framework that names its id fails over from its
//! previous stream to this one.

use cairn_api::internal::registry_operation::Operation;
use cairn_api::v1::{Event, FrameworkId, FrameworkInfo, event};

use super::{EventSender, FrameworkEntry, Leader};
use crate::error::CallError;

impl Leader {
    /// SUBSCRIBE: a new framework is recorded in the registry; one that names its id
    /// fails over onto this new stream. Returns the new stream's id. Where the caller
    /// is authenticated, `FrameworkInfo.principal` must be its `principal`, and only
    /// the principal that registered a framework may fail it over. Its principal
    /// must be allowed each of its roles (`register_frameworks`).
    pub(super) async fn subscribe(
        &mut self,
        mut info: FrameworkInfo,
        principal: Option<String>,
        events: EventSender,
    ) -> Result<String, CallError> {
        check_framework_info(&mut info)?;
        if let Some(principal) = &principal {
            check_principal(&mut info, principal)?;
        }
        (self.config.acls).check_roles(&info, &roles_of(&info))?;
        let framework_id = self.framework_id_for(&info)?;
        if let Some(principal) = principal {
            // A failover (or a re-subscription after a master restart) is the owner's.
            let owner = match self.frameworks.get(&framework_id) {
                Some(f) => Some(f.info.principal.clone()),
                None => (self.registry.state().frameworks.get(&framework_id))
                    .map(|i| i.principal.clone()),
            };
            if owner.is_some_and(|owner| owner != principal) {
                return Err(CallError::NotFrameworksPrincipal {
                    framework_id,
                    principal,
                });
            }
        }
        if let Some(registered) = self.registry.state().frameworks.get(&framework_id) {
            check_unchanged(registered, &info)?;
        }
        info.id = Some(FrameworkId {
            value: framework_id.clone(),
        });
        if self.registry.state().frameworks.get(&framework_id) != Some(&info) {
            self.registry
                .propose(Operation::AddFramework(info.clone()))
                .await?;
        }
        let subscribed = Event {
            r#type: event::Type::Subscribed as i32,
            subscribed: Some(event::Subscribed {
                framework_id: info.id.clone(),
                heartbeat_interval_seconds: self.config.framework_heartbeat_interval.as_secs_f64(),
            }),
            ..Default::default()
        };
        events
            .try_send(Ok(subscribed))
            .map_err(|_| CallError::SubscriptionClosed {
                framework_id: framework_id.clone(),
            })?;
        let stream_id = uuid::Uuid::new_v4().to_string();
        self.attach_stream(&framework_id, &info, stream_id.clone(), events);
        self.rescind_offers_of_framework(&framework_id);
        self.allocator
            .add_framework(&framework_id, &roles_of(&info));
        tracing::info!(framework_id, "framework subscribed");
        Ok(stream_id)
    }

    /// The id a subscribing framework gets: the one it names if this master knows it
    /// (a failover or a re-subscription after a master restart), else a new one.
    fn framework_id_for(&self, info: &FrameworkInfo) -> Result<String, CallError> {
        match info.id.as_ref().map(|i| i.value.as_str()) {
            Some(id) if !id.is_empty() => {
                let known = self.frameworks.contains_key(id)
                    || self.registry.state().frameworks.contains_key(id);
                if known {
                    Ok(id.to_owned())
                } else {
                    Err(CallError::FrameworkUnknownToMaster {
                        framework_id: id.to_owned(),
                    })
                }
            }
            _ => Ok(cairn_api::ids::new_framework_id().value),
        }
    }

    /// Makes `events` the framework's stream. A previous stream hears ERROR
    /// "framework failed over" and is dropped, so calls on it are refused from now on.
    fn attach_stream(
        &mut self,
        framework_id: &str,
        info: &FrameworkInfo,
        stream_id: String,
        events: EventSender,
    ) {
        if let Some(old) = self.frameworks.get_mut(framework_id) {
            if let Some((_, old_tx)) = old.stream.take() {
                let _ = old_tx.try_send(Ok(error_event("framework failed over")));
            }
            old.info = info.clone();
            old.stream = Some((stream_id, events));
            old.token = None;
            old.disconnected_at = None;
        } else {
            self.frameworks.insert(
                framework_id.to_owned(),
                FrameworkEntry {
                    token: None,
                    info: info.clone(),
                    stream: Some((stream_id, events)),
                    disconnected_at: None,
                },
            );
        }
    }
}

/// What SUBSCRIBE and UPDATE_FRAMEWORK both require of a FrameworkInfo; a missing
/// role becomes `*`, as in Mesos.
pub(super) fn check_framework_info(info: &mut FrameworkInfo) -> Result<(), CallError> {
    if info.name.is_empty() {
        return Err(CallError::FrameworkWithoutName);
    }
    if !info.role.is_empty() && !info.roles.is_empty() {
        return Err(CallError::RoleAndRoles);
    }
    if info.role.is_empty() && info.roles.is_empty() {
        info.role = "*".into();
    }
    for role in info.roles.iter().chain(std::iter::once(&info.role)) {
        if !role.is_empty() {
            super::roles::validate_role(role)?;
        }
    }
    Ok(())
}

/// What a failover or UPDATE_FRAMEWORK may not change, as in Mesos: the principal
/// (whose grants were checked) and the user (whom agents run tasks as).
pub(super) fn check_unchanged(old: &FrameworkInfo, new: &FrameworkInfo) -> Result<(), CallError> {
    for (field, from, to) in [
        ("principal", &old.principal, &new.principal),
        ("user", &old.user, &new.user),
    ] {
        if from != to {
            return Err(CallError::ImmutableChanged {
                field,
                from: from.clone(),
                to: to.clone(),
            });
        }
    }
    Ok(())
}

/// An authenticated subscriber's FrameworkInfo names it as its principal: one that
/// names none is given it, one that names another is refused.
fn check_principal(info: &mut FrameworkInfo, principal: &str) -> Result<(), CallError> {
    if info.principal.is_empty() {
        info.principal = principal.to_owned();
    }
    if info.principal != principal {
        return Err(CallError::PrincipalMismatch {
            principal: principal.to_owned(),
            info_principal: info.principal.clone(),
        });
    }
    Ok(())
}

/// The roles a framework is offered under: `roles` (multi-role) or else `role`.
pub(super) fn roles_of(info: &FrameworkInfo) -> Vec<String> {
    if info.roles.is_empty() {
        vec![info.role.clone()]
    } else {
        info.roles.clone()
    }
}

pub(super) fn error_event(message: &str) -> Event {
    Event {
        r#type: event::Type::Error as i32,
        error: Some(event::Error {
            message: message.to_owned(),
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use cairn_api::v1::{Call, call, event};

    use super::super::testing::{Cluster, framework_info};
    use crate::error::CallError;

    #[tokio::test]
    async fn subscribe_answers_subscribed_and_records_the_framework() {
        let cluster = Cluster::start().await;
        let framework = cluster.subscribe("alpha").await;
        assert!(!framework.id.is_empty());
        assert!(!framework.stream_id.is_empty());
        let snapshot = cluster.snapshot().await;
        let view = snapshot
            .frameworks
            .iter()
            .find(|f| f.id == framework.id)
            .expect("the framework is in the snapshot");
        assert_eq!(view.name, "alpha");
        assert_eq!(view.role, "*", "a framework without a role gets `*`");
        assert!(view.active);
    }

    #[tokio::test]
    async fn a_second_subscribe_with_the_id_fails_over() {
        let cluster = Cluster::start().await;
        let mut first = cluster.subscribe("alpha").await;
        let mut info = framework_info("alpha");
        info.id = Some(cairn_api::v1::FrameworkId {
            value: first.id.clone(),
        });
        let second = cluster.try_subscribe(info).await.expect("failover");
        assert_eq!(second.id, first.id, "the failover keeps the framework id");
        assert_ne!(second.stream_id, first.stream_id);
        let error = first.next_event(event::Type::Error).await;
        assert_eq!(error.error.expect("ERROR").message, "framework failed over");
        let revive = Call {
            r#type: call::Type::Revive as i32,
            ..Default::default()
        };
        let refused = cluster
            .call_on(Some(first.stream_id.clone()), &second, revive.clone())
            .await;
        assert!(
            matches!(refused, Err(CallError::NotCurrentStream { ref stream_id, .. }) if *stream_id == first.stream_id),
            "{refused:?}"
        );
        cluster
            .call(&second, revive)
            .await
            .expect("the new stream is current");
        let snapshot = cluster.snapshot().await;
        assert_eq!(snapshot.frameworks.len(), 1, "one framework, not two");
    }

    #[tokio::test]
    async fn subscribing_with_an_unknown_id_is_not_found() {
        let cluster = Cluster::start().await;
        let mut info = framework_info("alpha");
        info.id = Some(cairn_api::v1::FrameworkId {
            value: "no-such-framework".into(),
        });
        let refused = cluster.try_subscribe(info).await.err().expect("refused");
        assert_eq!(refused.http_status().as_u16(), 404);
        assert_eq!(
            refused.to_string(),
            "framework no-such-framework is unknown to this master: subscribe without an id"
        );
        assert!(cluster.snapshot().await.frameworks.is_empty());
    }

    #[tokio::test]
    async fn a_framework_without_a_name_or_with_a_bad_role_is_refused() {
        let cluster = Cluster::start().await;
        let refused = cluster
            .try_subscribe(framework_info(""))
            .await
            .err()
            .expect("refused");
        assert!(
            matches!(refused, CallError::FrameworkWithoutName),
            "{refused:?}"
        );
        let mut info = framework_info("alpha");
        info.role = "a b".into();
        let refused = cluster.try_subscribe(info).await.err().expect("refused");
        assert_eq!(
            refused.to_string(),
            "role \"a b\" is invalid: it contains whitespace, a control character or '*'"
        );
        assert_eq!(refused.http_status().as_u16(), 400);
        assert!(cluster.snapshot().await.frameworks.is_empty());
    }
}
