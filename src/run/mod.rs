//! `cairn run`: Mesos' `mesos-execute`, as a framework on the scheduler API. It
//! subscribes, takes the first offer that fits, launches one task (a wasm module, or
//! with `--native` or `--docker-image` a shell command), prints its state changes and
//! output, tears the framework down and exits with the task's status.

mod calls;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use cairn_api::Resources;
use cairn_api::v1::scheduler_client::SchedulerClient;
use cairn_api::v1::{
    Call, Event, FrameworkId, FrameworkInfo, Offer, TaskInfo, TaskState, TaskStatus, call,
    environment, event,
};
use clap::Args;
use tonic::transport::Channel;

use calls::{accept, acknowledge, decline_call, parse_env, sanitize, task_info};

#[derive(Args, Clone)]
pub struct RunArgs {
    /// The WebAssembly module (a WASI command) to run; with `--native` or
    /// `--docker-image`, the shell command to run.
    pub file: PathBuf,
    /// Run FILE as a shell command, a native process in a cgroup of its own.
    #[arg(long, conflicts_with = "docker_image")]
    pub native: bool,
    /// Run FILE as a shell command in a container of this Docker image (it must be
    /// on the agent: nothing is pulled).
    #[arg(long, value_name = "IMAGE")]
    pub docker_image: Option<String>,
    /// Arguments passed to the module, or appended to the command (after `--`).
    #[arg(last = true)]
    pub args: Vec<String>,
    /// The master's HOST:PORT.
    #[arg(long, env = "CAIRN_MASTER", default_value = "127.0.0.1:5050")]
    pub master: String,
    #[arg(long, default_value_t = 0.1)]
    pub cpus: f64,
    /// Memory in MB; also the cap on the module's linear memory.
    #[arg(long, default_value_t = 64.0)]
    pub mem: f64,
    /// Disk in MB: the sandbox's quota, stdout and stderr included.
    #[arg(long, default_value_t = 64.0)]
    pub disk: f64,
    /// Environment variables for the task, KEY=VALUE (repeatable).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// The task's name (default: the module's file name).
    #[arg(long)]
    pub name: Option<String>,
    /// Wall-clock limit (`max_completion_time`), e.g. 30s.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Deterministic CPU budget for the module, in wasmtime fuel units.
    #[arg(long)]
    pub fuel: Option<u64>,
    /// How long to wait for an offer that fits.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub offer_timeout: Duration,
    /// Who to call the master (and the agent, for the task's output) as.
    #[command(flatten)]
    pub caller: crate::caller::CallerFlags,
}

const STREAM_ID: &str = "mesos-stream-id";

struct Framework {
    client: SchedulerClient<Channel>,
    framework_id: FrameworkId,
    stream_id: String,
    /// The `authorization` metadata every call carries, if any.
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
}

impl Framework {
    async fn send(&mut self, mut call: Call) -> anyhow::Result<()> {
        call.framework_id = Some(self.framework_id.clone());
        let mut request = tonic::Request::new(call);
        request
            .metadata_mut()
            .insert(STREAM_ID, self.stream_id.parse().context("stream id")?);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        self.client
            .send(request)
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        Ok(())
    }
}

/// The one task `cairn run` launches, decided before any offer arrives.
struct Plan {
    args: RunArgs,
    task_id: String,
    task_name: String,
    /// The module's absolute path (empty for a command).
    module: PathBuf,
    file_name: String,
    env: Vec<environment::Variable>,
    wanted: Resources,
}

impl Plan {
    fn new(args: RunArgs) -> anyhow::Result<Self> {
        let is_command = args.native || args.docker_image.is_some();
        let (module, file_name) = if is_command {
            (PathBuf::new(), "command".to_owned())
        } else {
            let module = std::fs::canonicalize(&args.file)
                .with_context(|| format!("cannot read {}", args.file.display()))?;
            let file_name = module
                .file_name()
                .and_then(|n| n.to_str())
                .context("the module's file name is not UTF-8")?
                .to_owned();
            (module, file_name)
        };
        let env = parse_env(&args.env)?;
        let wanted = Resources::new()
            .with_scalar("cpus", args.cpus)
            .with_scalar("mem", args.mem)
            .with_scalar("disk", args.disk);
        let task_name = args.name.clone().unwrap_or_else(|| file_name.clone());
        let task_id = format!(
            "{}-{}",
            sanitize(&task_name),
            &uuid::Uuid::new_v4().to_string()[..8]
        );
        Ok(Self {
            args,
            task_id,
            task_name,
            module,
            file_name,
            env,
            wanted,
        })
    }

    fn task_info(&self, offer: &Offer) -> TaskInfo {
        task_info(
            &self.task_id,
            &self.task_name,
            &self.module,
            &self.file_name,
            &self.args,
            &self.env,
            &self.wanted,
            offer,
        )
    }
}

/// Runs the task and returns the exit code `cairn` itself should exit with.
pub async fn run(args: RunArgs) -> anyhow::Result<u8> {
    let plan = Plan::new(args)?;
    let authorization = match plan.args.caller.authorization()? {
        Some(v) => Some(v.parse().context("the credentials are not header-safe")?),
        None => None,
    };
    let (client, stream_id, mut events) =
        subscribe(&plan.args.master, authorization.as_ref()).await?;
    let mut session = Session {
        plan,
        client,
        stream_id,
        authorization,
        framework: None,
        launched_on: None,
    };
    let offer_deadline = tokio::time::Instant::now() + session.plan.args.offer_timeout;
    loop {
        let next = if session.launched_on.is_none() {
            match tokio::time::timeout_at(offer_deadline, events.message()).await {
                Ok(m) => m,
                Err(_) => bail!(
                    "no offer with {} arrived within {}",
                    session.plan.wanted,
                    humantime::format_duration(session.plan.args.offer_timeout)
                ),
            }
        } else {
            events.message().await
        };
        let event: Event = next
            .map_err(|s| anyhow::anyhow!("event stream failed: {}", s.message()))?
            .context("the master closed the event stream")?;
        if let Some(code) = session.on_event(event).await? {
            return Ok(code);
        }
    }
}

/// Subscribes `cairn-run` as a framework: the client, the stream id calls must carry,
/// and the event stream.
async fn subscribe(
    master: &str,
    authorization: Option<&tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> anyhow::Result<(SchedulerClient<Channel>, String, tonic::Streaming<Event>)> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{master}"))
        .with_context(|| format!("{master:?} is not HOST:PORT"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .with_context(|| format!("cannot reach master at {master}"))?;
    let mut client = SchedulerClient::new(channel);
    let subscribe = Call {
        r#type: call::Type::Subscribe as i32,
        subscribe: Some(call::Subscribe {
            framework_info: Some(FrameworkInfo {
                user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
                name: "cairn-run".into(),
                role: "*".into(),
                ..Default::default()
            }),
        }),
        ..Default::default()
    };
    let mut request = tonic::Request::new(subscribe);
    if let Some(value) = authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    let response = client
        .subscribe(request)
        .await
        .map_err(|s| anyhow::anyhow!("subscription refused: {}", s.message()))?;
    let stream_id = response
        .metadata()
        .get(STREAM_ID)
        .and_then(|v| v.to_str().ok())
        .context("the master sent no stream id")?
        .to_owned();
    Ok((client, stream_id, response.into_inner()))
}

/// The framework's side of one run: subscribed, then one launch, then its updates.
struct Session {
    plan: Plan,
    client: SchedulerClient<Channel>,
    stream_id: String,
    authorization: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
    framework: Option<Framework>,
    launched_on: Option<Offer>,
}

impl Session {
    /// Handles one event; the exit code once the task has ended.
    async fn on_event(&mut self, event: Event) -> anyhow::Result<Option<u8>> {
        match event::Type::try_from(event.r#type).unwrap_or(event::Type::Unknown) {
            event::Type::Subscribed => {
                let id = event
                    .subscribed
                    .and_then(|s| s.framework_id)
                    .context("SUBSCRIBED without an id")?;
                eprintln!("cairn: framework {} subscribed", id.value);
                self.framework = Some(Framework {
                    client: self.client.clone(),
                    framework_id: id,
                    stream_id: self.stream_id.clone(),
                    authorization: self.authorization.clone(),
                });
            }
            event::Type::Offers => {
                let offers = event.offers.map(|o| o.offers).unwrap_or_default();
                self.on_offers(offers).await?;
            }
            event::Type::Update => {
                if let Some(status) = event.update.and_then(|u| u.status) {
                    return self.on_update(status).await;
                }
            }
            event::Type::Error => {
                bail!(
                    "the master reported an error: {}",
                    event.error.map(|e| e.message).unwrap_or_default()
                )
            }
            _ => {}
        }
        Ok(None)
    }

    /// Launches the task on the first offer that fits; declines the rest.
    async fn on_offers(&mut self, offers: Vec<Offer>) -> anyhow::Result<()> {
        let fw = self
            .framework
            .as_mut()
            .context("OFFERS before SUBSCRIBED")?;
        let mut decline = Vec::new();
        for offer in offers {
            let fits = Resources::from_proto(&offer.resources)
                .map(|r| r.contains(&self.plan.wanted))
                .unwrap_or(false);
            if self.launched_on.is_none() && fits {
                fw.send(accept(&offer, self.plan.task_info(&offer))).await?;
                eprintln!(
                    "cairn: task {} launched on agent {}",
                    self.plan.task_id,
                    agent_of(&offer)
                );
                self.launched_on = Some(offer);
            } else if let Some(id) = offer.id {
                decline.push(id);
            }
        }
        if !decline.is_empty() {
            fw.send(decline_call(decline)).await?;
        }
        Ok(())
    }

    /// Prints and acknowledges an update; at a terminal one, prints the sandbox's
    /// output, tears the framework down and returns the exit code.
    async fn on_update(&mut self, status: TaskStatus) -> anyhow::Result<Option<u8>> {
        let fw = self
            .framework
            .as_mut()
            .context("UPDATE before SUBSCRIBED")?;
        let state = TaskState::try_from(status.state).unwrap_or(TaskState::TaskUnknown);
        print_status(&status, state);
        if !status.uuid.is_empty() {
            fw.send(acknowledge(&status)).await?;
        }
        if !state.is_terminal() {
            return Ok(None);
        }
        if let Some(offer) = &self.launched_on {
            let basic = self.plan.args.caller.basic_authorization().ok().flatten();
            let (framework_id, task_id) = (&fw.framework_id.value, &self.plan.task_id);
            print_sandbox_files(offer, framework_id, task_id, basic.as_deref()).await;
        }
        let _ = fw
            .send(Call {
                r#type: call::Type::Teardown as i32,
                ..Default::default()
            })
            .await;
        Ok(Some(exit_code(&status, state)))
    }
}

fn agent_of(offer: &Offer) -> String {
    format!(
        "{} ({})",
        offer
            .agent_id
            .as_ref()
            .map(|a| a.value.as_str())
            .unwrap_or("?"),
        offer.hostname
    )
}

fn print_status(status: &TaskStatus, state: TaskState) {
    let task_id = status
        .task_id
        .as_ref()
        .map(|t| t.value.as_str())
        .unwrap_or("?");
    let mut line = format!("cairn: task {task_id} is {}", state.as_str_name());
    if let Some(reason) = status
        .reason
        .and_then(|r| cairn_api::v1::task_status::Reason::try_from(r).ok())
    {
        line.push_str(&format!(" ({})", reason.as_str_name()));
    }
    if !status.message.is_empty() {
        line.push_str(&format!(": {}", status.message));
    }
    eprintln!("{line}");
}

fn exit_code(status: &TaskStatus, state: TaskState) -> u8 {
    if state == TaskState::TaskFinished {
        return 0;
    }
    let code = status
        .labels
        .as_ref()
        .and_then(|l| l.labels.iter().find(|l| l.key == "cairn.exit_code"))
        .and_then(|l| l.value.parse::<i32>().ok());
    match code {
        Some(c) if (1..=255).contains(&c) => c as u8,
        _ => 1,
    }
}

/// Prints the task's stdout to stdout and its stderr to stderr, read from the agent.
async fn print_sandbox_files(
    offer: &Offer,
    framework_id: &str,
    task_id: &str,
    authorization: Option<&str>,
) {
    let Some(address) = offer.url.as_ref().and_then(|u| u.address.as_ref()) else {
        return;
    };
    let base = format!("http://{}:{}", address.hostname, address.port);
    for (file, to_stdout) in [("stdout", true), ("stderr", false)] {
        match read_sandbox_file(&base, framework_id, task_id, file, authorization).await {
            Ok(data) if to_stdout => print!("{data}"),
            Ok(data) => eprint!("{data}"),
            Err(e) => eprintln!("cairn: cannot read the task's {file}: {e:#}"),
        }
    }
}

async fn read_sandbox_file(
    base: &str,
    framework_id: &str,
    task_id: &str,
    file: &str,
    authorization: Option<&str>,
) -> anyhow::Result<String> {
    #[derive(serde::Deserialize)]
    struct Page {
        data: String,
    }
    let client = reqwest::Client::new();
    let mut out = String::new();
    let mut offset = 0usize;
    loop {
        let mut request = client.get(format!("{base}/files/read"));
        if let Some(value) = authorization {
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        let response = request
            .query(&[
                ("framework_id", framework_id),
                ("task_id", task_id),
                ("path", file),
                ("offset", &offset.to_string()),
            ])
            .send()
            .await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(out);
        }
        let page: Page = response.error_for_status()?.json().await?;
        if page.data.is_empty() {
            return Ok(out);
        }
        offset += page.data.len();
        out.push_str(&page.data);
    }
}
