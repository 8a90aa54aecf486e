use std::pin::pin;

use futures::poll;

use super::*;

fn limits(json: &str) -> Result<RateLimits, RateLimitsError> {
    let limits: RateLimits =
        serde_json::from_str(json).map_err(|source| RateLimitsError::Parse {
            path: "test".into(),
            source,
        })?;
    limits.check()?;
    Ok(limits)
}

#[test]
fn mesos_documented_example_loads() {
    let l = limits(
        r#"{"limits": [{"principal": "foo", "qps": 55.5, "capacity": 100000},
                       {"principal": "bar", "qps": 300}, {"principal": "baz"}],
            "aggregate_default_qps": 333, "aggregate_default_capacity": 1000000}"#,
    )
    .unwrap();
    assert_eq!(l.limits.len(), 3);
    assert_eq!(l.limits[2].qps, None);
    assert_eq!(l.aggregate_default_capacity, Some(1_000_000));
}

#[test]
fn malformed_limits_are_refused_saying_why() {
    for (json, why) in [
        (r#"{"limits": [{"principal": "a", "qps": 0}]}"#, "one a day"),
        (
            r#"{"limits": [{"principal": "a", "qps": -1}]}"#,
            "one a day",
        ),
        (
            r#"{"limits": [{"principal": "a", "qps": 1e-30}]}"#,
            "one a day",
        ),
        (r#"{"aggregate_default_qps": 0}"#, "aggregate_default_qps"),
        (
            r#"{"limits": [{"principal": "a"}, {"principal": "a"}]}"#,
            "twice",
        ),
        (r#"{"limits": [{"principal": ""}]}"#, "empty"),
        (
            r#"{"limits": [{"principal": "a", "qpps": 3}]}"#,
            "unknown field",
        ),
        (r#"{"limits": [{"qps": 3}]}"#, "principal"),
    ] {
        let e = limits(json).expect_err(json).to_string();
        assert!(e.contains(why), "{json}: {e}");
    }
}

/// Admits `n` calls of `principal` one after another; how long they took.
async fn admit_n(l: &Limiter, principal: Option<&str>, n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        l.admit(principal, false).await.unwrap();
    }
    start.elapsed()
}

#[tokio::test]
async fn calls_are_held_to_their_principals_rate() {
    let l = Limiter::new(
        &limits(
            r#"{"limits": [{"principal": "slow", "qps": 1000}, {"principal": "free"}],
                "aggregate_default_qps": 200}"#,
        )
        .unwrap(),
    );
    // The first call goes at once, each next one a millisecond later.
    let took = admit_n(&l, Some("slow"), 21).await;
    assert!(took >= Duration::from_millis(20), "{took:?}");
    let delayed = |l: &Limiter| {
        let text = l.render();
        let line = text
            .lines()
            .find(|l| l.contains("delayed"))
            .unwrap()
            .to_owned();
        line.rsplit(' ').next().unwrap().parse::<u64>().unwrap()
    };
    let before = delayed(&l);
    assert!(before > 0);
    admit_n(&l, Some("free"), 1000).await;
    assert_eq!(
        delayed(&l),
        before,
        "a principal listed without qps never waits"
    );
    // The unlisted, and callers who are no one, share the aggregate's 200 a second.
    let took = admit_n(&l, Some("other"), 2).await + admit_n(&l, None, 2).await;
    assert!(took >= Duration::from_millis(15), "{took:?}");
    assert!(delayed(&l) > before);
}

#[tokio::test]
async fn past_its_capacity_a_call_is_refused_and_counted() {
    let l = Limiter::new(
        &limits(r#"{"limits": [{"principal": "p", "qps": 1, "capacity": 2}]}"#).unwrap(),
    );
    l.admit(Some("p"), false).await.unwrap();
    let mut second = pin!(l.admit(Some("p"), false));
    let mut third = pin!(l.admit(Some("p"), false));
    assert!(poll!(&mut second).is_pending());
    assert!(poll!(&mut third).is_pending());
    let refused = l.admit(Some("p"), false).await.unwrap_err();
    assert!(
        matches!(refused, CallError::Throttled { capacity: 2, .. }),
        "{refused}"
    );
    assert_eq!(refused.http_status().as_u16(), 429);
    second.await.unwrap();
    // One waits now: there is room again.
    let mut fourth = pin!(l.admit(Some("p"), false));
    assert!(poll!(&mut fourth).is_pending());
    assert!(
        l.render().contains("result=\"refused\"} 1"),
        "{}",
        l.render()
    );
}

#[tokio::test]
async fn a_caller_that_gives_up_frees_its_place() {
    let l = Limiter::new(
        &limits(r#"{"limits": [{"principal": "p", "qps": 1, "capacity": 1}]}"#).unwrap(),
    );
    l.admit(Some("p"), false).await.unwrap();
    {
        let mut waiting = pin!(l.admit(Some("p"), false));
        assert!(poll!(&mut waiting).is_pending());
        assert!(
            l.admit(Some("p"), false).await.is_err(),
            "the one place is taken"
        );
    }
    // Dropped while it waited: its place is free.
    l.admit(Some("p"), false).await.unwrap();
}

#[tokio::test]
async fn callers_that_give_up_cost_the_others_no_time() {
    let l = Limiter::new(&limits(r#"{"limits": [{"principal": "p", "qps": 2}]}"#).unwrap());
    l.admit(Some("p"), false).await.unwrap();
    let start = Instant::now();
    for _ in 0..20 {
        let mut gives_up = pin!(l.admit(Some("p"), false));
        assert!(poll!(&mut gives_up).is_pending());
    }
    // Had each taken its half second, this would wait ten.
    l.admit(Some("p"), false).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn accepts_and_declines_go_before_the_queue_within_a_second() {
    let l = Limiter::new(&limits(r#"{"limits": [{"principal": "p", "qps": 1}]}"#).unwrap());
    l.admit(Some("p"), false).await.unwrap();
    let mut queued = pin!(l.admit(Some("p"), false));
    assert!(poll!(&mut queued).is_pending());
    // The next second's slot goes to the urgent call at once...
    let mut urgent = pin!(l.admit(Some("p"), true));
    assert!(poll!(&mut urgent).is_ready());
    // ...and a second urgent one, past the burst, queues like the rest.
    let mut past_burst = pin!(l.admit(Some("p"), true));
    assert!(poll!(&mut past_burst).is_pending());
}
