//! The Mesos v1 scheduler HTTP API driven by a plain HTTP client: JSON calls, the
//! RecordIO event stream parsed here, `Mesos-Stream-Id`, and Mesos' status codes.

use serde_json::{Value, json};

use crate::harness::{Cluster, DEADLINE, guest};

/// A SUBSCRIBE response body read as RecordIO: `<length>\n<json>` records.
struct Events {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Events {
    async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.read())
            .await
            .expect("timed out waiting for an event")
    }

    async fn read(&mut self) -> Value {
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let len: usize = std::str::from_utf8(&self.buf[..nl])
                    .unwrap()
                    .parse()
                    .unwrap();
                if self.buf.len() >= nl + 1 + len {
                    let record: Vec<u8> = self.buf.drain(..nl + 1 + len).skip(nl + 1).collect();
                    return serde_json::from_slice(&record).unwrap();
                }
            }
            let chunk = self
                .response
                .chunk()
                .await
                .unwrap()
                .expect("event stream ended");
            self.buf.extend_from_slice(&chunk);
        }
    }

    /// The next event of a type, skipping heartbeats and others.
    async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let e = self.next().await;
            if e["type"] == kind {
                return e;
            }
        }
    }
}

struct Scheduler {
    http: reqwest::Client,
    url: String,
    framework_id: String,
    stream_id: String,
}

impl Scheduler {
    async fn subscribe(master: &str) -> (Scheduler, Events) {
        Self::subscribe_with(master, json!({"user": "root", "name": "http-test", "capabilities": [{"type": "PARTITION_AWARE"}]})).await
    }

    async fn subscribe_with(master: &str, framework_info: Value) -> (Scheduler, Events) {
        let http = reqwest::Client::new();
        let url = format!("http://{master}/api/v1/scheduler");
        let response = http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(
                json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": framework_info}})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        let stream_id = response.headers()["Mesos-Stream-Id"]
            .to_str()
            .unwrap()
            .to_owned();
        let mut events = Events {
            response,
            buf: Vec::new(),
        };
        let subscribed = events.next().await;
        assert_eq!(subscribed["type"], "SUBSCRIBED", "{subscribed}");
        let framework_id = subscribed["subscribed"]["framework_id"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        (
            Scheduler {
                http,
                url,
                framework_id,
                stream_id,
            },
            events,
        )
    }

    /// Sends a call with this framework's id and stream id; returns status and body.
    async fn call(&self, mut call: Value) -> (u16, String) {
        call["framework_id"] = json!({"value": self.framework_id});
        self.raw(&call.to_string(), Some(&self.stream_id)).await
    }

    /// Acknowledges an update that carries a uuid (the master's own updates do not).
    async fn acknowledge(&self, status: &Value) {
        if let Some(uuid) = status["uuid"].as_str() {
            let ack = json!({"type": "ACKNOWLEDGE", "acknowledge": {
                "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": uuid}});
            assert_eq!(self.call(ack).await.0, 202);
        }
    }

    /// The master's `/state`.
    async fn master_state(&self, master: &str) -> Value {
        let url = format!("http://{master}/state");
        self.http
            .get(&url)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Reads the master's `/state` until `done` holds for it, failing at the deadline.
    async fn state_until(&self, master: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut poll = tokio::time::interval(std::time::Duration::from_millis(100));
        tokio::time::timeout(DEADLINE, async {
            loop {
                poll.tick().await;
                let state = self.master_state(master).await;
                if done(&state) {
                    return state;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
    }

    async fn raw(&self, body: &str, stream_id: Option<&str>) -> (u16, String) {
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        if let Some(id) = stream_id {
            req = req.header("Mesos-Stream-Id", id);
        }
        let response = req.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

fn wasm_task(task_id: &str, agent_id: &Value, cpus: f64) -> Value {
    let module = guest("hello");
    json!({
        "name": "hello", "task_id": {"value": task_id}, "agent_id": agent_id,
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                      {"name": "mem", "type": "SCALAR", "scalar": {"value": 32}}],
        "command": {"uris": [{"value": format!("file://{}", module.display())}], "value": "hello.wasm",
                    "shell": false, "arguments": ["hello.wasm", "over", "http"]},
        "container": {"type": "WASM"},
        "max_completion_time": {"nanoseconds": 30_000_000_000u64}
    })
}

fn accept(offer: &Value, tasks: Vec<Value>) -> Value {
    json!({"type": "ACCEPT", "accept": {"offer_ids": [offer["id"]],
           "operations": [{"type": "LAUNCH", "launch": {"task_infos": tasks}}]}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_http_framework_runs_a_wasm_task_through_the_mesos_api() {
    let cluster = Cluster::start();
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;

    let offers = events.next_of("OFFERS").await;
    let offer = offers["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();
    assert!(
        offer["resources"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "cpus"),
        "{offer}"
    );

    assert_eq!(
        scheduler
            .call(accept(&offer, vec![wasm_task("t1", &agent_id, 0.5)]))
            .await
            .0,
        202
    );
    let mut states = Vec::new();
    loop {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        states.push(status["state"].as_str().unwrap().to_owned());
        scheduler.acknowledge(status).await;
        if states.last().unwrap() == "TASK_FINISHED" {
            break;
        }
    }
    assert_eq!(states, ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]);

    // Explicit reconciliation answers from the master's view.
    let reconcile =
        json!({"type": "RECONCILE", "reconcile": {"tasks": [{"task_id": {"value": "t1"}}]}});
    assert_eq!(scheduler.call(reconcile).await.0, 202);
    let update = events.next_of("UPDATE").await;
    assert_eq!(
        update["update"]["status"]["state"], "TASK_FINISHED",
        "{update}"
    );
    assert_eq!(
        update["update"]["status"]["reason"], "REASON_RECONCILIATION",
        "{update}"
    );

    // UPDATE_FRAMEWORK moves it to another role (a registry write).
    let update = json!({"type": "UPDATE_FRAMEWORK", "update_framework": {"framework_info": {
        "user": "root", "name": "http-test", "roles": ["eng/batch"]}}});
    assert_eq!(scheduler.call(update).await.0, 202);
    let roles: Value = scheduler
        .http
        .post(format!("http://{}/api/v1", cluster.master_addr))
        .body(json!({"type": "GET_ROLES"}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let eng = roles["get_roles"]["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "eng/batch")
        .cloned();
    assert_eq!(
        eng.unwrap()["frameworks"][0]["value"],
        scheduler.framework_id.as_str(),
        "{roles}"
    );

    assert_eq!(scheduler.call(json!({"type": "TEARDOWN"})).await.0, 202);
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_calls_get_clear_4xx_and_bad_tasks_get_task_error() {
    let cluster = Cluster::start();
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let agent_id = offer["agent_id"].clone();

    let (code, body) = scheduler.raw("{not json", Some(&scheduler.stream_id)).await;
    assert_eq!(code, 400, "{body}");
    assert!(body.starts_with("cannot parse the call: "), "{body}");

    let foreign =
        json!({"type": "REVIVE", "framework_id": {"value": "no-such-framework"}}).to_string();
    let (code, body) = scheduler.raw(&foreign, Some(&scheduler.stream_id)).await;
    assert_eq!(
        (code, body.as_str()),
        (404, "framework no-such-framework is not subscribed\n")
    );

    let revive =
        json!({"type": "REVIVE", "framework_id": {"value": scheduler.framework_id}}).to_string();
    let (code, body) = scheduler.raw(&revive, Some("wrong-stream")).await;
    assert_eq!(code, 403, "{body}");
    let (code, body) = scheduler.raw(&revive, None).await;
    assert_eq!(
        (code, body.as_str()),
        (400, "call has no Mesos-Stream-Id\n")
    );

    // Asking for more than the offer holds: TASK_ERROR, and the offer's resources return.
    assert_eq!(
        scheduler
            .call(accept(&offer, vec![wasm_task("big", &agent_id, 64.0)]))
            .await
            .0,
        202
    );
    let update = events.next_of("UPDATE").await;
    let status = &update["update"]["status"];
    assert_eq!(status["state"], "TASK_ERROR", "{update}");
    assert_eq!(status["reason"], "REASON_TASK_INVALID", "{update}");
    assert!(
        status["message"]
            .as_str()
            .unwrap()
            .contains("asks for cpus:64"),
        "{update}"
    );

    // One task id twice in one ACCEPT: the first launches, the second is TASK_ERROR.
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let twins = vec![
        wasm_task("twin", &agent_id, 0.1),
        wasm_task("twin", &agent_id, 0.1),
    ];
    assert_eq!(scheduler.call(accept(&offer, twins)).await.0, 202);
    let (mut errors, mut finished) = (Vec::new(), false);
    while errors.is_empty() || !finished {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        finished |= status["state"] == "TASK_FINISHED";
        if status["state"] == "TASK_ERROR" {
            errors.push(status["message"].as_str().unwrap().to_owned());
        } else {
            scheduler.acknowledge(status).await;
        }
    }
    assert_eq!(errors, ["task id twin is already in use"]);

    // A LAUNCH_GROUP with one bad task: the whole group is refused, nothing launches.
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let group = json!({"type": "ACCEPT", "accept": {"offer_ids": [offer["id"]], "operations": [{
        "type": "LAUNCH_GROUP", "launch_group": {"task_group": {"tasks": [
            wasm_task("g1", &agent_id, 0.1), wasm_task("g2", &agent_id, 99.0)]}}}]}});
    assert_eq!(scheduler.call(group).await.0, 202);
    for _ in 0..2 {
        let update = events.next_of("UPDATE").await;
        let status = &update["update"]["status"];
        assert_eq!(status["state"], "TASK_ERROR", "{update}");
        assert_eq!(status["reason"], "REASON_TASK_GROUP_INVALID", "{update}");
    }

    // Reusing a spent offer: TASK_DROPPED with REASON_INVALID_OFFERS.
    assert_eq!(
        scheduler
            .call(accept(&offer, vec![wasm_task("late", &agent_id, 0.1)]))
            .await
            .0,
        202
    );
    let update = events.next_of("UPDATE").await;
    assert_eq!(
        update["update"]["status"]["state"], "TASK_DROPPED",
        "{update}"
    );
    assert_eq!(
        update["update"]["status"]["reason"], "REASON_INVALID_OFFERS",
        "{update}"
    );

    // Nothing leaked: once the refusal filter lapses, the agent is offered whole again.
    let revive = json!({"type": "REVIVE"});
    assert_eq!(scheduler.call(revive).await.0, 202);
    let again = events.next_of("OFFERS").await;
    let cpus = again["offers"]["offers"][0]["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "cpus")
        .unwrap()["scalar"]["value"]
        .as_f64()
        .unwrap();
    assert_eq!(cpus, 2.0, "{again}");
    let state = scheduler.master_state(&cluster.master_addr).await;
    assert_eq!(state["agents"][0]["used_resources"], "", "{state}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_time_out_and_a_vanished_framework_is_removed_after_its_failover_timeout() {
    let cluster = Cluster::start_with(&[
        "--offer-timeout",
        "300ms",
        "--framework-heartbeat-interval",
        "100ms",
    ]);
    let info = json!({"user": "root", "name": "vanishing", "failover_timeout": 1.0});
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    // Nobody answers the offer: it is rescinded after the offer timeout.
    let rescind = events.next_of("RESCIND").await;
    assert_eq!(rescind["rescind"]["offer_id"], offer["id"], "{rescind}");

    drop(events);
    let framework_id = scheduler.framework_id.clone();
    scheduler
        .state_until(&cluster.master_addr, "the framework's removal", |state| {
            !state["frameworks"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["id"] == framework_id.as_str())
        })
        .await;
    cluster.assert_no_panics();
}

/// pymesos, an unmodified Mesos scheduler library from PyPI (installed by
/// `scripts/setup`), runs a wasm task on Cairn.
#[test]
fn pymesos_runs_a_wasm_task() {
    let cluster = Cluster::start();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pymesos/run_wasm.py");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(script)
        .arg(&cluster.master_addr)
        .arg(guest("hello"));
    let out = crate::harness::output_within(cmd, DEADLINE);
    let stdout = crate::harness::text(&out.stdout);
    assert!(
        out.status.success(),
        "pymesos failed:\n{stdout}\n{}",
        crate::harness::text(&out.stderr)
    );
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        ["TASK_STARTING", "TASK_RUNNING", "TASK_FINISHED"]
    );
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_reach_the_executor_and_its_death_is_a_failure_event() {
    let cluster = Cluster::start();
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = launch_spinning_task(&cluster, &scheduler, &mut events).await;
    let agent_id = offer["agent_id"].clone();
    let executor_id = format!("cairn-executor-{}", scheduler.framework_id);
    let message = json!({"type": "MESSAGE", "message": {
        "agent_id": agent_id, "executor_id": {"value": executor_id}, "data": "aGVsbG8="}});
    assert_eq!(scheduler.call(message).await.0, 202);
    let stranger = json!({"type": "MESSAGE", "message": {
        "agent_id": agent_id, "executor_id": {"value": "nobody"}, "data": ""}});
    assert_eq!(scheduler.call(stranger).await.0, 404);
    let executor_dir = cluster
        .work_dir()
        .join("frameworks")
        .join(&scheduler.framework_id)
        .join("executors")
        .join(&executor_id);
    crate::harness::wait_for("the message in the executor's log", || {
        let log = std::fs::read_to_string(executor_dir.join("executor.log")).unwrap_or_default();
        log.contains("framework message received bytes=5")
            .then_some(())
    });

    // kill -9 the executor: its task fails and the framework hears of the executor.
    let pid: i32 = std::fs::read_to_string(executor_dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let (mut failure, mut failed) = (None, None);
    while failure.is_none() || failed.is_none() {
        let e = events.next().await;
        match e["type"].as_str() {
            Some("FAILURE") => failure = Some(e),
            Some("UPDATE") => failed = Some(e["update"]["status"].clone()),
            _ => {}
        }
    }
    let failure = failure.unwrap();
    assert_eq!(
        failure["failure"]["executor_id"]["value"],
        executor_id.as_str(),
        "{failure}"
    );
    let failed = failed.unwrap();
    assert_eq!(failed["state"], "TASK_FAILED", "{failed}");
    assert_eq!(failed["reason"], "REASON_EXECUTOR_TERMINATED", "{failed}");
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_agent_is_unreachable_and_its_tasks_come_back_when_it_does() {
    let cluster = Cluster::start_with(&["--agent-timeout", "1s"]);
    let info = json!({"user": "root", "name": "partition-aware", "capabilities": [{"type": "PARTITION_AWARE"}]});
    let (scheduler, mut events) = Scheduler::subscribe_with(&cluster.master_addr, info).await;
    launch_spinning_task(&cluster, &scheduler, &mut events).await;

    // Freeze the agent: no heartbeats. Its executor and task keep running.
    cluster.agent.signal(nix::sys::signal::Signal::SIGSTOP);
    let update = events.next_of("UPDATE").await;
    let status = &update["update"]["status"];
    assert_eq!(status["state"], "TASK_UNREACHABLE", "{update}");
    assert_eq!(status["reason"], "REASON_AGENT_REMOVED", "{update}");
    assert_eq!(status["source"], "SOURCE_MASTER", "{update}");

    // Thawed, it re-registers with its task, and the master's view is rebuilt.
    cluster.agent.signal(nix::sys::signal::Signal::SIGCONT);
    scheduler
        .state_until(
            &cluster.master_addr,
            "the agent and its task to come back",
            |state| {
                let running = state["tasks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|t| t["id"] == "spin" && t["state"] == "TASK_RUNNING");
                running && state["agents"][0]["active"] == true
            },
        )
        .await;
    cluster.assert_no_panics();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_an_agent_forgot_across_a_restart_are_lost() {
    let mut cluster = Cluster::start();
    let (scheduler, mut events) = Scheduler::subscribe(&cluster.master_addr).await;
    let offer = launch_spinning_task(&cluster, &scheduler, &mut events).await;
    // kill -9 the agent and start a new one on the same work dir: same agent id, and
    // (with no checkpoints yet) no memory of the task.
    cluster.agent.kill();
    cluster.agent = crate::harness::start_agent(cluster.dir.path(), &cluster.master_addr);
    let update = events.next_of("UPDATE").await;
    let status = &update["update"]["status"];
    assert_eq!(status["state"], "TASK_LOST", "{update}");
    assert_eq!(status["reason"], "REASON_AGENT_REREGISTERED", "{update}");
    assert_eq!(status["agent_id"], offer["agent_id"], "{update}");
    cluster.assert_no_panics();
}

/// Launches a task that spins forever on the first offer and waits until it runs,
/// acknowledging its updates; returns the offer it used.
async fn launch_spinning_task(
    cluster: &Cluster,
    scheduler: &Scheduler,
    events: &mut Events,
) -> Value {
    let spin = cluster.module(
        "spin.wasm",
        r#"(module (func (export "_start") (loop (br 0))))"#,
    );
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let task = json!({
        "name": "spin", "task_id": {"value": "spin"}, "agent_id": offer["agent_id"],
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.1}}],
        "command": {"uris": [{"value": format!("file://{}", spin.display())}], "value": "spin.wasm", "shell": false},
        "container": {"type": "WASM"}
    });
    assert_eq!(scheduler.call(accept(&offer, vec![task])).await.0, 202);
    loop {
        let update = events.next_of("UPDATE").await;
        scheduler.acknowledge(&update["update"]["status"]).await;
        if update["update"]["status"]["state"] == "TASK_RUNNING" {
            return offer;
        }
    }
}
