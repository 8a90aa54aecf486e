//! A plain-HTTP framework for the tests: the Mesos v1 scheduler API's JSON calls and
//! its RecordIO event stream, parsed here.

use serde_json::{Value, json};

use crate::harness::{Cluster, DEADLINE, guest};

/// A SUBSCRIBE response body read as RecordIO: `<length>\n<json>` records.
pub struct Events {
    response: reqwest::Response,
    buf: Vec<u8>,
}

impl Events {
    pub async fn next(&mut self) -> Value {
        tokio::time::timeout(DEADLINE, self.read())
            .await
            .expect("timed out waiting for an event")
    }

    pub async fn read(&mut self) -> Value {
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
    pub async fn next_of(&mut self, kind: &str) -> Value {
        loop {
            let e = self.next().await;
            if e["type"] == kind {
                return e;
            }
        }
    }
}

#[derive(Clone)]
pub struct Scheduler {
    pub http: reqwest::Client,
    url: String,
    pub framework_id: String,
    pub stream_id: String,
    /// HTTP Basic principal and secret, sent with every call.
    pub credential: Option<(String, String)>,
}

impl Scheduler {
    pub async fn subscribe(master: &str) -> (Scheduler, Events) {
        Self::subscribe_with(master, json!({"user": "root", "name": "http-test", "capabilities": [{"type": "PARTITION_AWARE"}]})).await
    }

    pub async fn subscribe_with(master: &str, framework_info: Value) -> (Scheduler, Events) {
        Self::subscribe_as(master, framework_info, None).await
    }

    /// SUBSCRIBE with HTTP Basic `credential` (principal, secret), sent with every
    /// later call too; panics if refused.
    pub async fn subscribe_as(
        master: &str,
        framework_info: Value,
        credential: Option<(&str, &str)>,
    ) -> (Scheduler, Events) {
        let subscribe =
            json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": framework_info}});
        match Self::try_subscribe(master, &subscribe, credential).await {
            Ok(subscribed) => subscribed,
            Err((status, body)) => panic!("SUBSCRIBE refused: {status} {body}"),
        }
    }

    /// Sends the SUBSCRIBE call `subscribe`; a refusal is its status and body.
    pub async fn try_subscribe(
        master: &str,
        subscribe: &Value,
        credential: Option<(&str, &str)>,
    ) -> Result<(Scheduler, Events), (u16, String)> {
        cairn_api::tls::install_default_provider();
        let http = reqwest::Client::new();
        let url = format!("http://{master}/api/v1/scheduler");
        let credential = credential.map(|(p, s)| (p.to_owned(), s.to_owned()));
        let mut request = http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(subscribe.to_string());
        if let Some((principal, secret)) = &credential {
            request = request.basic_auth(principal, Some(secret));
        }
        let response = request.send().await.unwrap();
        if response.status() != 200 {
            let status = response.status().as_u16();
            let www = (response.headers().get("WWW-Authenticate"))
                .map(|v| format!("WWW-Authenticate: {}\n", v.to_str().unwrap_or_default()))
                .unwrap_or_default();
            return Err((status, format!("{www}{}", response.text().await.unwrap())));
        }
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
        let scheduler = Scheduler {
            http,
            url,
            framework_id,
            stream_id,
            credential,
        };
        Ok((scheduler, events))
    }

    /// Sends a call with this framework's id and stream id; returns status and body.
    pub async fn call(&self, mut call: Value) -> (u16, String) {
        call["framework_id"] = json!({"value": self.framework_id});
        self.raw(&call.to_string(), Some(&self.stream_id)).await
    }

    /// Acknowledges an update that carries a uuid (the master's own updates do not).
    pub async fn acknowledge(&self, status: &Value) {
        if let Some(uuid) = status["uuid"].as_str() {
            let ack = json!({"type": "ACKNOWLEDGE", "acknowledge": {
                "agent_id": status["agent_id"], "task_id": status["task_id"], "uuid": uuid}});
            assert_eq!(self.call(ack).await.0, 202);
        }
    }

    /// The master's `/state`.
    pub async fn master_state(&self, master: &str) -> Value {
        let url = format!("http://{master}/state");
        let mut request = self.http.get(&url);
        if let Some((principal, secret)) = &self.credential {
            request = request.basic_auth(principal, Some(secret));
        }
        request.send().await.unwrap().json().await.unwrap()
    }

    /// Reads the master's `/state` until `done` holds for it, failing at the deadline.
    pub async fn state_until(
        &self,
        master: &str,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
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

    pub async fn raw(&self, body: &str, stream_id: Option<&str>) -> (u16, String) {
        let mut req = self
            .http
            .post(&self.url)
            .header("Content-Type", "application/json")
            .body(body.to_owned());
        if let Some(id) = stream_id {
            req = req.header("Mesos-Stream-Id", id);
        }
        if let Some((principal, secret)) = &self.credential {
            req = req.basic_auth(principal, Some(secret));
        }
        let response = req.send().await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }
}

pub fn wasm_task(task_id: &str, agent_id: &Value, cpus: f64) -> Value {
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

pub fn accept(offer: &Value, tasks: Vec<Value>) -> Value {
    json!({"type": "ACCEPT", "accept": {"offer_ids": [offer["id"]],
           "operations": [{"type": "LAUNCH", "launch": {"task_infos": tasks}}]}})
}

/// Launches a task that spins forever on the first offer and waits until it runs,
/// acknowledging its updates; returns the offer it used.
pub async fn launch_spinning_task(
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

/// What a fake agent (a test's own gRPC client of the master) registers as: an agent
/// on loopback under `agent_id`, holding `resources`.
pub fn fake_agent_info(agent_id: &str, resources: &str) -> cairn_api::v1::AgentInfo {
    cairn_api::v1::AgentInfo {
        hostname: "127.0.0.1".into(),
        port: 1,
        resources: cairn_api::Resources::parse(resources).unwrap().to_proto(),
        attributes: Vec::new(),
        id: Some(cairn_api::v1::AgentId {
            value: agent_id.to_owned(),
        }),
    }
}
