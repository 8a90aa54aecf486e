//! The registry survives a master restart: every registration went through Raft into
//! RocksDB.

use cairn_api::v1::scheduler_client::SchedulerClient;
use cairn_api::v1::{Call, FrameworkInfo, call, event};

use cairn_test_support::harness::{Cluster, get_json, start_master, wait_for};

use crate::CAIRN;

/// Subscribes a framework and leaves it registered (no TEARDOWN); returns its id.
fn subscribe_framework(master: &str) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let mut client = SchedulerClient::connect(format!("http://{master}"))
            .await
            .unwrap();
        let call = Call {
            r#type: call::Type::Subscribe as i32,
            subscribe: Some(call::Subscribe {
                framework_info: Some(FrameworkInfo {
                    name: "restart-test".into(),
                    failover_timeout: 3600.0,
                    ..Default::default()
                }),
            }),
            ..Default::default()
        };
        let mut events = client.subscribe(call).await.unwrap().into_inner();
        let first = events.message().await.unwrap().unwrap();
        assert_eq!(first.r#type, event::Type::Subscribed as i32);
        first.subscribed.unwrap().framework_id.unwrap().value
    })
}

fn ids(state: &serde_json::Value, key: &str) -> Vec<String> {
    state[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn a_restarted_master_still_knows_its_agent_and_framework() {
    let mut cluster = Cluster::start(CAIRN);
    let framework_id = subscribe_framework(&cluster.master_addr);
    let before = get_json(&cluster.master_addr, "/state");
    let agent_ids = ids(&before, "agents");
    assert_eq!(agent_ids.len(), 1, "{before}");
    assert!(
        ids(&before, "frameworks").contains(&framework_id),
        "{before}"
    );

    cluster.master.kill();
    let (master, addr) = start_master(CAIRN, cluster.dir.path(), &cluster.master_addr);
    cluster.master = master;
    assert_eq!(addr, cluster.master_addr);

    // Straight from the registry, before anyone reconnects.
    let after = get_json(&addr, "/state");
    assert_eq!(ids(&after, "agents"), agent_ids, "{after}");
    assert_eq!(ids(&after, "frameworks"), vec![framework_id], "{after}");
    assert!(
        after["registry_applied_index"].as_u64().unwrap() >= 3,
        "{after}"
    );

    // The agent comes back under the same id.
    wait_for("the agent to re-register", || {
        let s = get_json(&addr, "/state");
        (s["agents"][0]["active"] == true).then_some(())
    });
    assert_eq!(ids(&get_json(&addr, "/state"), "agents"), agent_ids);
    cluster.assert_no_panics();
}
