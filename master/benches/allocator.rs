//! One full allocation cycle: every agent has its resources free and is offered to
//! some framework. Cluster profiles follow Mesos' hierarchical allocator benchmarks
//! (agents of 8 cpus / 16 GB, one role per framework), plus 1,000 roles under quota.
//!
//! Run: `cargo bench -p cairn-master --profile dev --bench allocator`
//! (see docs/benchmarks.md for why the dev profile).

use std::time::{Duration, Instant};

use cairn_api::Resources;
use cairn_master::allocator::{Allocator, Grant, Quota};
use criterion::{BenchmarkId, Criterion};

fn cluster(agents: usize, frameworks: usize, quota_roles: bool) -> Allocator {
    let mut a = Allocator::new(42);
    let agent = Resources::parse("cpus:8;mem:16384;disk:100000;ports:[31000-32000]").unwrap();
    for i in 0..agents {
        a.add_agent(&format!("agent-{i}"), agent.clone(), vec![]);
    }
    for i in 0..frameworks {
        let role = format!("role-{i}");
        if quota_roles {
            // Each role guaranteed a few agents' worth: 1,000 roles hold most of the cluster.
            a.set_quota(
                &role,
                Quota {
                    guarantee: Resources::parse("cpus:16;mem:32768").unwrap(),
                    limit: Some(Resources::parse("cpus:400;mem:800000").unwrap()),
                },
            );
        }
        a.add_framework(&format!("framework-{i}"), &[role]);
    }
    a
}

/// Times `allocate` only; giving the grants back (so the next cycle starts from a
/// free cluster) is not timed.
fn cycle(a: &mut Allocator, iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let grants: Vec<Grant> = a.allocate(Instant::now());
        timed += start.elapsed();
        assert!(!grants.is_empty());
        for g in grants {
            a.recover(&g.framework_id, &g.agent_id, &g.role, &g.resources, None);
        }
    }
    timed
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("allocation_cycle");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500));
    for agents in [1_000usize, 10_000, 50_000] {
        for frameworks in [10usize, 100, 1_000] {
            let mut a = cluster(agents, frameworks, false);
            group.bench_function(
                BenchmarkId::new(format!("{agents}_agents"), frameworks),
                |b| b.iter_custom(|iters| cycle(&mut a, iters)),
            );
        }
    }
    let mut a = cluster(10_000, 1_000, true);
    group.bench_function("10000_agents/1000_quota_roles", |b| {
        b.iter_custom(|iters| cycle(&mut a, iters))
    });
    group.finish();
}

fn peak_rss_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    if let Some(mb) = peak_rss_mb() {
        println!("peak RSS of the benchmark process: {mb:.0} MB");
    }
}
