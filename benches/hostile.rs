//! Does a hostile tenant degrade an honest one? An honest framework's rate of short
//! wasm tasks through a real master and agent (the Mesos v1 HTTP API), measured alone
//! and then while hostile tenants, in the same run, open and drop subscriptions,
//! hold tasks that never end, and flood the master with calls: one framework that
//! never reads its events (so its stream is dropped and its calls refused), and one
//! that stays subscribed and sends calls the master accepts.
//!
//! Every tenant authenticates as its own principal, and the master holds scheduler
//! calls to Mesos' `--rate-limits` as an operator protecting a high-SLA framework would
//! set them: the honest principal listed without a rate, everyone else sharing the
//! aggregate default. `--unlimited` runs the same without rate limits.
//!
//! ```text
//! cargo bench --workspace --profile dev --bench hostile -- [--tasks 2000] [--churn 300] [--flooders 8] [--unlimited]
//! ```

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use cairn_test_support::framework::{self, Scheduler};
use common::{cluster_with, drive, is_terminal, task};
use serde_json::{Value, json};

/// How long the honest run beside the hostile tenants may take before it counts as
/// starved (alone, it takes about two seconds).
const BESIDE_DEADLINE: Duration = Duration::from_secs(60);

struct Options {
    tasks: usize,
    /// Subscriptions the churner opens and drops.
    churn: usize,
    /// Concurrent callers flooding the master.
    flooders: usize,
    /// No `--rate-limits` on the master.
    unlimited: bool,
}

/// Each tenant's principal and secret.
const HONEST: (&str, &str) = ("honest", "honest-secret");
const CHURNER: (&str, &str) = ("churner", "churner-secret");
const HOG: (&str, &str) = ("hog", "hog-secret");
const CHATTER: (&str, &str) = ("chatter", "chatter-secret");

/// The honest principal unthrottled; the others share 100 calls a second, with at
/// most 100 held back.
const RATE_LIMITS: &str = r#"{"limits": [{"principal": "honest"}],
    "aggregate_default_qps": 100, "aggregate_default_capacity": 100}"#;

/// The master's flags: an offer timeout, credentials for every tenant, and the rate
/// limits unless `unlimited`.
fn master_flags(dir: &std::path::Path, unlimited: bool) -> Vec<String> {
    let credentials: Vec<Value> = [HONEST, CHURNER, HOG, CHATTER]
        .iter()
        .map(|(principal, secret)| json!({"principal": principal, "secret": secret}))
        .collect();
    let credentials_file = dir.join("credentials.json");
    std::fs::write(
        &credentials_file,
        json!({ "credentials": credentials }).to_string(),
    )
    .unwrap();
    let mut flags = vec![
        // A framework that never answers its offers (the hog, once it stops reading
        // its events) would hold them for ever: Mesos' bound on that.
        "--offer-timeout".to_owned(),
        "1s".to_owned(),
        "--credentials".to_owned(),
        credentials_file.display().to_string(),
        "--authenticate-frameworks".to_owned(),
    ];
    if !unlimited {
        let limits_file = dir.join("rate-limits.json");
        std::fs::write(&limits_file, RATE_LIMITS).unwrap();
        flags.extend([
            "--rate-limits".to_owned(),
            limits_file.display().to_string(),
        ]);
    }
    flags
}

/// A FrameworkInfo for `principal`, run as `nobody`.
fn framework_info(name: &str, principal: &str) -> Value {
    json!({"user": "nobody", "name": name, "principal": principal})
}

fn options() -> Options {
    let mut o = Options {
        tasks: 2000,
        churn: 300,
        flooders: 8,
        unlimited: false,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let mut value = || it.next().cloned().unwrap_or_default();
        match arg.as_str() {
            "--tasks" => o.tasks = value().parse().expect("--tasks N"),
            "--churn" => o.churn = value().parse().expect("--churn N"),
            "--flooders" => o.flooders = value().parse().expect("--flooders N"),
            "--unlimited" => o.unlimited = true,
            _ => {} // cargo bench passes --bench
        }
    }
    o
}

/// The honest framework: `total` short wasm tasks; its rate and how many did not
/// finish.
async fn honest(addr: &str, name: &str, total: usize) -> (f64, usize) {
    let info = framework_info(name, HONEST.0);
    let (scheduler, mut events) = Scheduler::subscribe_as(addr, info, Some(HONEST)).await;
    let mut failed = 0usize;
    let (started, ended) = drive(
        &scheduler,
        &mut events,
        total,
        1000,
        |i, agent| task(&format!("{name}-{i}"), agent, "exit", &["0"]),
        |status| {
            let state = status["state"].as_str().unwrap_or_default();
            if is_terminal(state) && state != "TASK_FINISHED" {
                if failed == 0 {
                    eprintln!("{name}: a task ended {state}: {status}");
                }
                failed += 1;
            }
            is_terminal(state)
        },
    )
    .await;
    (total as f64 / (ended - started).as_secs_f64(), failed)
}

/// What the hostile tenants did, counted.
#[derive(Default)]
struct Counts {
    subscriptions: AtomicU64,
    calls: AtomicU64,
    refused: AtomicU64,
    sleepers: AtomicU64,
    /// Told on every change above, for the wait until the load has built up.
    changed: tokio::sync::Notify,
}

/// Opens a subscription and drops it at once, `churn` times, eight at a time.
async fn churn(addr: String, churn: usize, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let next = Arc::new(AtomicU64::new(0));
    let workers = (0..8).map(|_| {
        let (addr, counts, stop, next) = (addr.clone(), counts.clone(), stop.clone(), next.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed)
                && next.fetch_add(1, Ordering::Relaxed) < churn as u64
            {
                let mut info = framework_info("churn", CHURNER.0);
                info["failover_timeout"] = json!(0.0);
                let subscribe = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": info}});
                match Scheduler::try_subscribe(&addr, &subscribe, Some(CHURNER)).await {
                    Ok(_) => counts.subscriptions.fetch_add(1, Ordering::Relaxed),
                    Err(_) => counts.refused.fetch_add(1, Ordering::Relaxed),
                };
            }
        })
    });
    for worker in workers.collect::<Vec<_>>() {
        let _ = worker.await;
    }
}

/// A framework that takes every offer for tasks that sleep for ten hours, and keeps
/// the offers' rest; then floods the master with REVIVE and RECONCILE calls.
async fn hog_and_flood(addr: String, flooders: usize, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let info = framework_info("hog", HOG.0);
    let (scheduler, mut events) = Scheduler::subscribe_as(&addr, info, Some(HOG)).await;
    let offer = events.next_of("OFFERS").await["offers"]["offers"][0].clone();
    let sleepers: Vec<Value> = (0..200)
        .map(|i| {
            task(
                &format!("sleep-{i}"),
                &offer["agent_id"],
                "sleep",
                &["36000"],
            )
        })
        .collect();
    assert_eq!(
        scheduler.call(framework::accept(&offer, sleepers)).await.0,
        202
    );
    counts.sleepers.fetch_add(200, Ordering::Relaxed);
    counts.changed.notify_waiters();
    // Its events are never read past this: the master must not queue them forever.
    flood(&scheduler, flooders, &counts, &stop).await;
    drop(events);
}

/// `flooders` loops of REVIVE and RECONCILE calls as `scheduler`, until `stop`.
async fn flood(
    scheduler: &Scheduler,
    flooders: usize,
    counts: &Arc<Counts>,
    stop: &Arc<AtomicBool>,
) {
    let floods = (0..flooders).map(|i| {
        let (scheduler, counts, stop) = (scheduler.clone(), counts.clone(), stop.clone());
        tokio::spawn(async move {
            let call = match i % 2 {
                0 => json!({"type": "REVIVE"}),
                _ => json!({"type": "RECONCILE", "reconcile": {"tasks": []}}),
            };
            while !stop.load(Ordering::Relaxed) {
                let (status, body) = scheduler.call(call.clone()).await;
                counts.calls.fetch_add(1, Ordering::Relaxed);
                counts.changed.notify_waiters();
                if status >= 400 && counts.refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("the first refused flood call: {status} {body}");
                }
            }
        })
    });
    let floods: Vec<_> = floods.collect();
    for flood in floods {
        let _ = flood.await;
    }
}

/// A framework that stays subscribed (it reads its events) and floods the master
/// with calls it accepts: REVIVE and RECONCILE.
async fn chatter(addr: String, flooders: usize, counts: Arc<Counts>, stop: Arc<AtomicBool>) {
    let info = framework_info("chatter", CHATTER.0);
    let (scheduler, mut events) = Scheduler::subscribe_as(&addr, info, Some(CHATTER)).await;
    // It declines every offer at once, asking for it again: holding them would be
    // hoarding, which only `--offer-timeout` bounds (as in Mesos).
    let decliner = scheduler.clone();
    let reader = tokio::spawn(async move {
        loop {
            let event = events.next().await;
            if event["type"] == "OFFERS" {
                let ids: Vec<Value> = (event["offers"]["offers"].as_array().into_iter().flatten())
                    .map(|o| o["id"].clone())
                    .collect();
                let decline = json!({"type": "DECLINE", "decline": {"offer_ids": ids,
                    "filters": {"refuse_seconds": 0.0}}});
                decliner.call(decline).await;
            }
        }
    });
    flood(&scheduler, flooders, &counts, &stop).await;
    reader.abort();
}

async fn run(o: &Options) {
    let dir = tempfile::tempdir().unwrap();
    eprintln!("logs in {}", dir.path().display());
    let flags = master_flags(dir.path(), o.unlimited);
    let (_master, _agent, addr) = cluster_with(dir.path(), &flags).await;
    // A first run warms the agent's compile cache and executor for the honest user.
    honest(&addr, "warm-up", o.tasks / 4).await;
    let (alone, failed_alone) = honest(&addr, "alone", o.tasks).await;
    println!(
        "| honest short wasm tasks, alone | {} | {alone:.0} tasks/s | {failed_alone} not FINISHED |",
        o.tasks
    );

    let counts = Arc::new(Counts::default());
    let stop = Arc::new(AtomicBool::new(false));
    let hog = tokio::spawn(hog_and_flood(
        addr.clone(),
        o.flooders,
        counts.clone(),
        stop.clone(),
    ));
    let churner = tokio::spawn(churn(addr.clone(), o.churn, counts.clone(), stop.clone()));
    let chatty = tokio::spawn(chatter(
        addr.clone(),
        o.flooders,
        counts.clone(),
        stop.clone(),
    ));
    // Let the hostile load build up before the honest run starts.
    let calls = if o.flooders == 0 { 0 } else { 1000 };
    let built_up = async {
        loop {
            let changed = counts.changed.notified();
            if counts.calls.load(Ordering::Relaxed) >= calls
                && counts.sleepers.load(Ordering::Relaxed) > 0
            {
                return;
            }
            changed.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), built_up)
        .await
        .expect("the hostile tenants started within a minute");
    let limits = if o.unlimited {
        ", no rate limits"
    } else {
        ", rate limits"
    };
    let beside = tokio::time::timeout(BESIDE_DEADLINE, honest(&addr, "beside", o.tasks)).await;
    stop.store(true, Ordering::Relaxed);
    let Ok((beside, failed_beside)) = beside else {
        println!(
            "| honest short wasm tasks, beside hostile tenants{} | {} | not done within {BESIDE_DEADLINE:?} | starved; hostile: {} subscriptions opened and dropped, {} calls, {} refused |",
            limits,
            o.tasks,
            counts.subscriptions.load(Ordering::Relaxed),
            counts.calls.load(Ordering::Relaxed),
            counts.refused.load(Ordering::Relaxed),
        );
        cairn_test_support::harness::kill_executors(&dir.path().join("agent"));
        return;
    };
    let _ = tokio::time::timeout(Duration::from_secs(30), churner).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), hog).await;
    let _ = tokio::time::timeout(Duration::from_secs(30), chatty).await;

    println!(
        "| honest short wasm tasks, beside hostile tenants{} | {} | {beside:.0} tasks/s ({:.0}% of alone) | {failed_beside} not FINISHED; hostile: {} subscriptions opened and dropped, {} calls, {} refused, {} tasks that never end |",
        limits,
        o.tasks,
        100.0 * beside / alone,
        counts.subscriptions.load(Ordering::Relaxed),
        counts.calls.load(Ordering::Relaxed),
        counts.refused.load(Ordering::Relaxed),
        counts.sleepers.load(Ordering::Relaxed),
    );
    cairn_test_support::harness::kill_executors(&dir.path().join("agent"));
}

fn main() {
    let o = options();
    println!("| measure | tasks | result | notes |");
    println!("|---|---:|---:|---|");
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(run(&o));
}
