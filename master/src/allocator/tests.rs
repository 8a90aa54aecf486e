//! The allocator's rules, checked as properties: DRF's progressive filling with
//! weights, quota before fair sharing, limits, filters, and that nothing is ever
//! offered twice or lost.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use cairn_api::Resources;
use proptest::prelude::*;

use super::*;

fn small_agent() -> Resources {
    Resources::parse("cpus:1;mem:1024").unwrap()
}

fn cluster(agents: usize, roles: &[(&str, f64)]) -> Allocator {
    let mut a = Allocator::new(7);
    for i in 0..agents {
        a.add_agent(&format!("agent-{i}"), small_agent(), vec![]);
    }
    for (i, (role, weight)) in roles.iter().enumerate() {
        a.set_weight(role, *weight);
        a.add_framework(&format!("fw-{i}"), &[role.to_string()]);
    }
    a
}

fn agents_per_role(grants: &[Grant]) -> HashMap<String, usize> {
    let mut n = HashMap::new();
    for g in grants {
        *n.entry(g.role.clone()).or_default() += 1;
    }
    n
}

proptest! {
    /// DRF (Ghodsi et al., "Dominant Resource Fairness", 2011) with weights, by
    /// progressive filling: each agent goes to the role with the lowest weighted
    /// dominant share, so no role ends more than one agent ahead of its weighted share:
    /// (n_i - 1) / w_i <= n_j / w_j for every pair of roles.
    #[test]
    fn weighted_drf_converges_to_weighted_fair_shares(
        agents in 1usize..300,
        weights in proptest::collection::vec(1u32..6, 1..7),
    ) {
        let names: Vec<String> = (0..weights.len()).map(|i| format!("role{i}")).collect();
        let roles: Vec<(&str, f64)> = names.iter().zip(&weights).map(|(n, w)| (n.as_str(), *w as f64)).collect();
        let mut a = cluster(agents, &roles);
        let grants = a.allocate(Instant::now());
        prop_assert_eq!(grants.len(), agents, "every agent is offered");
        let n = agents_per_role(&grants);
        for (ri, wi) in &roles {
            for (rj, wj) in &roles {
                let ni = *n.get(*ri).unwrap_or(&0) as f64;
                let nj = *n.get(*rj).unwrap_or(&0) as f64;
                if ni > 0.0 {
                    prop_assert!((ni - 1.0) / wi <= nj / wj + 1e-9,
                        "{ri} (w {wi}) got {ni}, {rj} (w {wj}) got {nj}");
                }
            }
        }
    }

    /// Hierarchical roles: fairness applies between `a` and `b` first, then between
    /// `a`'s children inside `a`'s share.
    #[test]
    fn hierarchical_shares_split_at_each_level(agents in 4usize..200) {
        let mut a = cluster(agents, &[("a/x", 1.0), ("a/y", 1.0), ("b", 1.0)]);
        let n = agents_per_role(&a.allocate(Instant::now()));
        let (x, y, b) = (n.get("a/x").copied().unwrap_or(0), n.get("a/y").copied().unwrap_or(0), n["b"]);
        prop_assert!((x + y).abs_diff(b) <= 1, "a got {}, b got {b}", x + y);
        prop_assert!(x.abs_diff(y) <= 1, "a/x got {x}, a/y got {y}");
    }

    /// Quota first: a role's guarantee is met before fair sharing, even against roles
    /// with ten times its weight.
    #[test]
    fn quota_guarantees_are_met_before_fair_sharing(
        agents in 10usize..200,
        guarantee_pct in 10usize..60,
        others in 1usize..6,
    ) {
        let guarantee = agents * guarantee_pct / 100;
        let mut roles = vec![("quota", 1.0)];
        let names: Vec<String> = (0..others).map(|i| format!("heavy{i}")).collect();
        roles.extend(names.iter().map(|n| (n.as_str(), 10.0)));
        let mut a = cluster(agents, &roles);
        a.set_quota("quota", Quota {
            guarantee: Resources::parse(&format!("cpus:{guarantee}")).unwrap(),
            limit: None,
        });
        let n = agents_per_role(&a.allocate(Instant::now()));
        prop_assert!(n.get("quota").copied().unwrap_or(0) >= guarantee, "{n:?} guarantee {guarantee}");
    }

    /// Limits cap a role whatever its share: offers are trimmed to fit.
    #[test]
    fn limits_are_never_exceeded(agents in 1usize..100, limit_tenths in 1u32..200) {
        let mut a = cluster(agents, &[("capped", 100.0), ("other", 1.0)]);
        let limit = limit_tenths as f64 / 10.0;
        a.set_quota("capped", Quota {
            guarantee: Resources::new(),
            limit: Some(Resources::parse(&format!("cpus:{limit}")).unwrap()),
        });
        let grants = a.allocate(Instant::now());
        let cpus: f64 = grants.iter().filter(|g| g.role == "capped").map(|g| g.resources.cpus()).sum();
        prop_assert!(cpus <= limit + 1e-9, "capped got {cpus} cpus, limit {limit}");
    }
}

#[derive(Debug, Clone)]
enum Op {
    Allocate,
    Recover { index: usize, refuse: bool },
    AddAgent(u8),
    RemoveAgent(u8),
    AddFramework(u8),
    RemoveFramework(u8),
    Suppress(u8),
    Revive(u8),
    Advance(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Allocate),
        4 => (any::<usize>(), any::<bool>()).prop_map(|(index, refuse)| Op::Recover { index, refuse }),
        1 => (0u8..8).prop_map(Op::AddAgent),
        1 => (0u8..8).prop_map(Op::RemoveAgent),
        1 => (0u8..4).prop_map(Op::AddFramework),
        1 => (0u8..4).prop_map(Op::RemoveFramework),
        1 => (0u8..4).prop_map(Op::Suppress),
        1 => (0u8..4).prop_map(Op::Revive),
        1 => (0u8..10).prop_map(Op::Advance),
    ]
}

proptest! {
    /// On every agent, allocated + available = total after any sequence of events,
    /// and what is allocated is exactly what the outstanding grants hold: nothing is
    /// offered twice, nothing is lost.
    #[test]
    fn nothing_is_offered_twice_or_lost(ops in proptest::collection::vec(op(), 1..80)) {
        let agent_resources = Resources::parse("cpus:4;mem:4096;ports:[31000-31009]").unwrap();
        let mut a = Allocator::new(3);
        let mut now = Instant::now();
        let mut outstanding: Vec<Grant> = Vec::new();
        for op in ops {
            match op {
                Op::Allocate => outstanding.extend(a.allocate(now)),
                Op::Recover { index, refuse } if !outstanding.is_empty() => {
                    let g = outstanding.swap_remove(index % outstanding.len());
                    let filter = refuse.then_some((Duration::from_secs(5), now));
                    a.recover(&g.framework_id, &g.agent_id, &g.role, &g.resources, filter);
                    if refuse {
                        a.declined(&g.framework_id, &g.agent_id, now);
                    }
                }
                Op::Recover { .. } => {}
                Op::AddAgent(i) => {
                    let id = format!("agent-{i}");
                    outstanding.retain(|g| g.agent_id != id);
                    a.add_agent(&id, agent_resources.clone(), vec![]);
                }
                Op::RemoveAgent(i) => {
                    let id = format!("agent-{i}");
                    outstanding.retain(|g| g.agent_id != id);
                    a.remove_agent(&id);
                }
                Op::AddFramework(i) => a.add_framework(&format!("fw-{i}"), &[format!("role{}", i % 2)]),
                Op::RemoveFramework(i) => {
                    let id = format!("fw-{i}");
                    outstanding.retain(|g| g.framework_id != id);
                    a.remove_framework(&id);
                }
                Op::Suppress(i) => a.suppress(&format!("fw-{i}"), &[]),
                Op::Revive(i) => a.revive(&format!("fw-{i}"), &[]),
                Op::Advance(s) => now += Duration::from_secs(s as u64),
            }
            for (agent, total, allocated, available) in a.agent_allocations() {
                prop_assert_eq!(allocated.add(&available), total.clone(), "agent {}", agent);
                let granted = outstanding
                    .iter()
                    .filter(|g| g.agent_id == agent)
                    .fold(Resources::new(), |acc, g| acc.add(&g.resources));
                prop_assert_eq!(granted, allocated, "agent {}", agent);
            }
        }
    }
}

#[test]
fn a_declined_agent_is_not_offered_again_until_the_filter_expires() {
    let mut a = cluster(1, &[("r", 1.0)]);
    let t0 = Instant::now();
    let g = a.allocate(t0).pop().unwrap();
    a.recover(
        &g.framework_id,
        &g.agent_id,
        &g.role,
        &g.resources,
        Some((Duration::from_secs(5), t0)),
    );
    assert!(a.allocate(t0 + Duration::from_secs(4)).is_empty());
    assert_eq!(a.allocate(t0 + Duration::from_secs(5)).len(), 1);
}

#[test]
fn a_suppressed_framework_gets_nothing_until_revived() {
    let mut a = cluster(3, &[("r", 1.0)]);
    a.suppress("fw-0", &[]);
    assert!(a.allocate(Instant::now()).is_empty());
    a.revive("fw-0", &[]);
    assert_eq!(a.allocate(Instant::now()).len(), 3);
}

#[test]
fn suppress_and_revive_apply_per_role() {
    let mut a = Allocator::new(1);
    for i in 0..4 {
        a.add_agent(&format!("agent-{i}"), small_agent(), vec![]);
    }
    a.add_framework("fw", &["web".to_string(), "batch".to_string()]);
    a.suppress("fw", &["web".to_string()]);
    let grants = a.allocate(Instant::now());
    assert_eq!(grants.len(), 4);
    assert!(grants.iter().all(|g| g.role == "batch"), "{grants:?}");
    for g in grants {
        a.recover(&g.framework_id, &g.agent_id, &g.role, &g.resources, None);
    }
    a.suppress("fw", &["batch".to_string()]);
    assert!(a.allocate(Instant::now()).is_empty());
    a.revive("fw", &["web".to_string()]);
    let grants = a.allocate(Instant::now());
    assert_eq!(
        grants.len(),
        4,
        "every agent is offered to the revived role"
    );
    assert!(grants.iter().all(|g| g.role == "web"), "{grants:?}");
}

#[test]
fn unmet_guarantees_hold_resources_back_from_other_roles() {
    // "q" is guaranteed 2 of 3 agents but its framework is suppressed: fair sharing may
    // hand out only the third.
    let mut a = cluster(3, &[("q", 1.0), ("other", 1.0)]);
    a.set_quota(
        "q",
        Quota {
            guarantee: Resources::parse("cpus:2").unwrap(),
            limit: None,
        },
    );
    a.suppress("fw-0", &[]);
    let grants = a.allocate(Instant::now());
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!(grants[0].role, "other");
}

/// One agent; "holder" already runs tasks on half of it, so "decliner" (holding
/// nothing) is first under DRF.
fn decliner_and_holder() -> Allocator {
    let mut a = Allocator::new(5);
    a.add_framework("decliner", &["a".to_string()]);
    a.add_framework("holder", &["b".to_string()]);
    let half = Resources::parse("cpus:1;mem:1024").unwrap();
    a.add_agent(
        "agent-0",
        Resources::parse("cpus:2;mem:2048").unwrap(),
        vec![("holder".into(), "b".into(), half)],
    );
    a
}

/// Declines `g` with `refuse_seconds: 0`, as a framework that wants nothing but
/// to be offered everything again would.
fn decline(a: &mut Allocator, g: &Grant, now: Instant) {
    a.recover(
        &g.framework_id,
        &g.agent_id,
        &g.role,
        &g.resources,
        Some((Duration::ZERO, now)),
    );
    a.declined(&g.framework_id, &g.agent_id, now);
}

#[test]
fn a_framework_that_declines_an_agent_goes_behind_the_others_for_it() {
    let mut a = decliner_and_holder();
    let t0 = Instant::now();
    let g = a.allocate(t0).pop().unwrap();
    assert_eq!(
        g.framework_id, "decliner",
        "DRF: the lower share goes first"
    );
    decline(&mut a, &g, t0);
    a.revive("decliner", &[]);
    // Revived and with the lower share, it still waits while another takes the agent.
    for step in 1..5 {
        let now = t0 + Duration::from_millis(10 * step);
        let g = a.allocate(now).pop().unwrap();
        assert_eq!(g.framework_id, "holder", "step {step}");
        a.recover(&g.framework_id, &g.agent_id, &g.role, &g.resources, None);
    }
    let g = a.allocate(t0 + DECLINE_YIELD).pop().unwrap();
    assert_eq!(
        g.framework_id, "decliner",
        "its turn comes back after the yield"
    );
}

#[test]
fn a_declined_agent_goes_back_to_its_decliner_when_no_one_else_may_take_it() {
    let mut a = decliner_and_holder();
    let t0 = Instant::now();
    let g = a.allocate(t0).pop().unwrap();
    decline(&mut a, &g, t0);
    a.suppress("holder", &[]);
    let g = a.allocate(t0).pop().expect("offered again at once");
    assert_eq!(g.framework_id, "decliner");
}

#[test]
fn of_two_decliners_the_one_that_declined_longest_ago_goes_first() {
    let mut a = decliner_and_holder();
    let t0 = Instant::now();
    let g = a.allocate(t0).pop().unwrap();
    decline(&mut a, &g, t0);
    let t1 = t0 + Duration::from_millis(5);
    let g = a.allocate(t1).pop().unwrap();
    assert_eq!(g.framework_id, "holder");
    decline(&mut a, &g, t1);
    let g = a.allocate(t1).pop().unwrap();
    assert_eq!(g.framework_id, "decliner", "it declined first");
    decline(&mut a, &g, t1 + Duration::from_millis(1));
    let g = a.allocate(t1 + Duration::from_millis(1)).pop().unwrap();
    assert_eq!(g.framework_id, "holder", "its decline is now the older");
}

#[test]
fn a_framework_that_lets_offers_lapse_gets_none_for_a_doubling_while() {
    let mut a = decliner_and_holder();
    let t0 = Instant::now();
    let timeout = Duration::from_secs(1);
    let lapse = |a: &mut Allocator, now: Instant| {
        let g = a.allocate(now).pop().unwrap();
        assert_eq!(
            g.framework_id, "decliner",
            "DRF: the lower share goes first"
        );
        a.recover(&g.framework_id, &g.agent_id, &g.role, &g.resources, None);
        a.lapsed("decliner", now, timeout);
    };
    lapse(&mut a, t0);
    a.revive("decliner", &[]);
    a.suppress("holder", &[]);
    assert!(a.allocate(t0).is_empty(), "backed off, REVIVE or not");
    lapse(&mut a, t0 + timeout);
    // The second lapse in a row: two timeouts now.
    assert!(a.allocate(t0 + timeout * 2).is_empty());
    // Offers of an earlier cycle lapsing within the backoff are the same lapse.
    a.lapsed("decliner", t0 + timeout * 2, timeout);
    lapse(&mut a, t0 + timeout * 3);
    // The third in a row: four timeouts. Answering a newer offer keeps it.
    a.answered("decliner");
    assert!(
        a.allocate(t0 + timeout * 6).is_empty(),
        "answering keeps the backoff"
    );
    lapse(&mut a, t0 + timeout * 7);
    // Forgiven by the answer: this lapse counts as a first, one timeout.
    assert!(a.allocate(t0 + timeout * 7 + timeout / 2).is_empty());
    assert_eq!(a.allocate(t0 + timeout * 8).len(), 1);
}

#[test]
fn lapse_backoff_stops_at_its_cap_and_ends_with_a_new_subscription() {
    let mut a = decliner_and_holder();
    a.suppress("holder", &[]);
    let timeout = Duration::from_secs(10);
    let mut now = Instant::now();
    for _ in 0..10 {
        a.lapsed("decliner", now, timeout);
        now += MAX_LAPSE_BACKOFF;
    }
    assert!(a.allocate(now - Duration::from_secs(1)).is_empty());
    let g = a.allocate(now).pop().expect("never longer than the cap");
    a.recover(&g.framework_id, &g.agent_id, &g.role, &g.resources, None);
    a.lapsed("decliner", now, timeout);
    assert!(a.allocate(now).is_empty());
    // It subscribes again (a failover): a fresh scheduler.
    a.add_framework("decliner", &["a".to_string()]);
    assert_eq!(a.allocate(now).len(), 1);
}

#[test]
fn each_decline_in_a_row_doubles_the_yield_until_a_launch() {
    let mut a = decliner_and_holder();
    let mut now = Instant::now();
    let second = Duration::from_secs(1);
    let holder_takes = |a: &mut Allocator, at: Instant, why: &str| {
        let g = a.allocate(at).pop().unwrap();
        assert_eq!(g.framework_id, "holder", "{why}");
        a.recover(&g.framework_id, &g.agent_id, &g.role, &g.resources, None);
    };
    // Each decline once the last yield is over: 1 s, 2 s, 4 s, then the cap.
    for yielded in [1, 2, 4, 8, 8] {
        let g = a.allocate(now).pop().unwrap();
        assert_eq!(g.framework_id, "decliner", "after {yielded} s");
        decline(&mut a, &g, now);
        let just_before = now + second * yielded - Duration::from_millis(1);
        holder_takes(&mut a, just_before, "within the yield");
        now += second * yielded;
        assert!(second * yielded <= MAX_DECLINE_YIELD);
    }
    // It launches something here: its next decline counts as a first.
    let g = a.allocate(now).pop().unwrap();
    assert_eq!(g.framework_id, "decliner");
    a.launched("decliner", "agent-0");
    decline(&mut a, &g, now);
    holder_takes(
        &mut a,
        now + second - Duration::from_millis(1),
        "one second",
    );
    assert_eq!(
        a.allocate(now + second).pop().unwrap().framework_id,
        "decliner"
    );
}
