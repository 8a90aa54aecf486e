use super::*;

fn roles(values: &[&str]) -> Entity {
    Entity::Some {
        values: values.iter().map(|v| v.to_string()).collect(),
    }
}

/// The example of Mesos' authorization docs: foo may register for analytics, and no
/// one else may.
const ANALYTICS: &str = r#"{
  "register_frameworks": [
    {"principals": {"values": ["foo"]}, "roles": {"values": ["analytics"]}},
    {"principals": {"type": "NONE"}, "roles": {"values": ["analytics"]}}
  ]
}"#;

#[test]
fn the_first_matching_rule_decides_and_none_allows_no_one() {
    let acls = Acls::parse(ANALYTICS).unwrap();
    let register =
        |p: Option<&str>, r: &[&str]| acls.check(p, Action::RegisterFrameworks, &roles(r));
    assert_eq!(register(Some("foo"), &["analytics"]), Ok(()));
    let refused = register(Some("bar"), &["analytics"]).unwrap_err();
    assert_eq!(
        refused.to_string(),
        "principal 'bar' is not authorized to register_frameworks analytics (the master's --acls)"
    );
    assert!(register(None, &["analytics"]).is_err());
    // No rule is about other roles: permissive (the default) lets them through.
    assert_eq!(register(Some("bar"), &["dev"]), Ok(()));
}

#[test]
fn not_permissive_refuses_what_no_rule_allows() {
    let acls = Acls::parse(
        r#"{"permissive": false,
            "run_tasks": [{"principals": {"values": ["alice"]}, "users": {"values": ["alice", "nobody"]}},
                          {"principals": {"type": "ANY"}, "users": {"values": ["nobody"]}}],
            "update_weights": [{"principals": {"values": ["ops"]}, "roles": {"type": "ANY"}}]}"#,
    )
    .unwrap();
    let run = |p: Option<&str>, user: &str| acls.check(p, Action::RunTasks, &Entity::one(user));
    assert_eq!(run(Some("alice"), "alice"), Ok(()));
    assert_eq!(run(Some("bob"), "nobody"), Ok(()));
    assert!(run(Some("bob"), "alice").is_err());
    // An unauthenticated caller is ANY: only an ANY subject lets it through.
    assert_eq!(run(None, "nobody"), Ok(()));
    assert!(run(None, "alice").is_err());
    let weights = |p: &str| acls.check(Some(p), Action::UpdateWeights, &roles(&["prod"]));
    assert_eq!(weights("ops"), Ok(()));
    assert!(weights("alice").is_err());
    assert!(
        acls.check(Some("ops"), Action::UpdateQuota, &roles(&["prod"]))
            .is_err()
    );
}

#[test]
fn mesos_files_load_and_unknown_actions_or_entities_are_refused() {
    let mesos = r#"{"view_frameworks": [{"principals": {"type": "ANY"}, "users": {"type": "ANY"}}],
                    "teardown_frameworks": [{"principals": {"values": ["ops"]},
                                             "framework_principals": {"type": "ANY"}}]}"#;
    let acls = Acls::parse(mesos).unwrap();
    let teardown = |p: &str| acls.check(Some(p), Action::TeardownFrameworks, &Entity::one("alice"));
    assert_eq!(teardown("ops"), Ok(()));
    for bad in [
        r#"{"launch_rockets": []}"#,
        r#"{"run_tasks": [{"principals": {"type": "SOME"}, "users": {"type": "ANY"}}]}"#,
        r#"{"run_tasks": [{"principals": {"values": ["a"]}}]}"#,
        r#"{"permissive": "yes"}"#,
    ] {
        assert!(Acls::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn entities_and_objects_are_read_as_mesos_reads_them() {
    // `type` decides: NONE with values is still NONE (it must not fail open).
    let acls = Acls::parse(
        r#"{"run_tasks": [{"principals": {"type": "NONE", "values": ["bob"]}, "users": {"type": "ANY"}}]}"#,
    )
    .unwrap();
    assert!(
        acls.check(Some("bob"), Action::RunTasks, &Entity::one("x"))
            .is_err()
    );
    // Each action names its object as Mesos does, and only that.
    for wrong in [
        r#"{"run_tasks": [{"principals": {"type": "ANY"}, "roles": {"type": "NONE"}}]}"#,
        r#"{"view_tasks": [{"principals": {"type": "ANY"}, "users": {"type": "ANY"}, "roles": {"type": "ANY"}}]}"#,
        r#"{"teardown_frameworks": [{"principals": {"type": "ANY"}, "users": {"type": "ANY"}}]}"#,
    ] {
        let why = Acls::parse(wrong).unwrap_err();
        assert!(why.contains("names its object as"), "{wrong}: {why}");
    }
    // Mesos' names load, and Cairn's earlier spellings with them.
    let acls = Acls::parse(
        r#"{"mark_agents_gone": [{"principals": {"type": "NONE"}, "agents": {"type": "ANY"}}],
            "update_quota": [{"principals": {"type": "NONE"}, "roles": {"type": "ANY"}}],
            "register_agents": [], "get_maintenance_statuses": []}"#,
    )
    .unwrap();
    assert!(
        acls.check(Some("ops"), Action::MarkAgentGone, &Entity::ANY)
            .is_err()
    );
    assert!(
        acls.check(Some("ops"), Action::UpdateQuota, &roles(&["r"]))
            .is_err()
    );
    assert_eq!(
        acls.unchecked_actions(),
        ["get_maintenance_statuses", "register_agents"]
    );
}
