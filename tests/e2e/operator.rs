//! The operator API: weights and quota are registry writes, so they survive a master
//! restart; bad updates are refused whole with a 400 and change nothing.

use serde_json::{Value, json};

use cairn_test_support::harness::{Cluster, start_master};

use crate::CAIRN;

pub fn operator(master: &str, call: Value) -> (u16, String) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let response = reqwest::Client::new()
            .post(format!("http://{master}/api/v1"))
            .header("Content-Type", "application/json")
            .body(call.to_string())
            .send()
            .await
            .unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    })
}

fn get(master: &str, kind: &str) -> Value {
    let (code, body) = operator(master, json!({ "type": kind }));
    assert_eq!(code, 200, "{kind}: {body}");
    serde_json::from_str(&body).unwrap()
}

#[test]
fn weights_and_quota_are_registry_writes_that_survive_a_restart() {
    let mut cluster = Cluster::start(CAIRN);
    let master = cluster.master_addr.clone();
    assert_eq!(get(&master, "GET_HEALTH")["get_health"]["healthy"], true);
    let flags = get(&master, "GET_FLAGS");
    let interval = flags["get_flags"]["flags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "allocation_interval")
        .cloned();
    assert_eq!(interval.unwrap()["value"], "200ms", "{flags}");

    let weights = json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [
        {"role": "eng", "weight": 3.0}, {"role": "eng/batch", "weight": 0.5}]}});
    assert_eq!(operator(&master, weights).0, 200);
    let quota = json!({"type": "UPDATE_QUOTA", "update_quota": {"quota_configs": [
        {"role": "eng", "guarantees": {"cpus": {"value": 1}}, "limits": {"cpus": {"value": 2}, "mem": {"value": 512}}}]}});
    assert_eq!(operator(&master, quota).0, 200);

    // Refused whole: one bad entry and nothing changes.
    let bad = json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [
        {"role": "ops", "weight": 2.0}, {"role": "bad role", "weight": 1.0}]}});
    let (code, body) = operator(&master, bad);
    assert_eq!(
        (code, body.as_str()),
        (
            400,
            "role \"bad role\" is invalid: it contains whitespace, a control character or '*'\n"
        )
    );
    let over = json!({"type": "UPDATE_QUOTA", "update_quota": {"quota_configs": [
        {"role": "ops", "guarantees": {"cpus": {"value": 8}}, "limits": {"cpus": {"value": 4}}}]}});
    let (code, body) = operator(&master, over);
    assert_eq!(
        (code, body.as_str()),
        (
            400,
            "quota for role ops: guarantee cpus:8 exceeds limit cpus:4\n"
        )
    );
    let (code, body) = operator(&master, json!({"type": "NOPE"}));
    assert_eq!(
        (code, body.as_str()),
        (400, "operator call \"NOPE\" is not supported\n")
    );

    let expected_weights =
        json!([{"role": "eng", "weight": 3.0}, {"role": "eng/batch", "weight": 0.5}]);
    assert_eq!(
        get(&master, "GET_WEIGHTS")["get_weights"]["weight_infos"],
        expected_weights
    );

    cluster.master.kill();
    let (restarted, addr) = start_master(CAIRN, cluster.dir.path(), &master);
    cluster.master = restarted;
    assert_eq!(
        get(&addr, "GET_WEIGHTS")["get_weights"]["weight_infos"],
        expected_weights
    );
    let configs = &get(&addr, "GET_QUOTA")["get_quota"]["status"]["configs"];
    assert_eq!(
        configs,
        &json!([{"role": "eng", "guarantees": {"cpus": {"value": 1.0}},
        "limits": {"cpus": {"value": 2.0}, "mem": {"value": 512.0}}}])
    );
    cluster.assert_no_panics();
}
