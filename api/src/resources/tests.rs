use proptest::prelude::*;

use super::*;

fn parse(text: &str) -> Resources {
    Resources::parse(text).unwrap()
}

#[test]
fn parses_the_agent_flag_format() {
    let r = parse("cpus:4;mem:8192;disk:40960;ports:[31000-32000]");
    assert_eq!(r.cpus(), 4.0);
    assert_eq!(r.mem(), 8192.0);
    assert_eq!(r.disk(), 40960.0);
    assert_eq!(
        r.ranges("ports").unwrap().iter().collect::<Vec<_>>(),
        vec![(31000, 32000)]
    );
}

#[test]
fn parses_sets_roles_whitespace_and_several_ranges() {
    let r = parse(" cpus(*) : 0.5 ; ports:[1-2, 5-6,3-3] ; zones:{a, b} ;");
    assert_eq!(r.cpus(), 0.5);
    assert_eq!(
        r.ranges("ports").unwrap().iter().collect::<Vec<_>>(),
        vec![(1, 3), (5, 6)]
    );
    assert_eq!(r.to_string(), "cpus:0.5;ports:[1-3,5-6];zones:{a,b}");
}

#[test]
fn rejects_malformed_text_with_a_reason() {
    let cases = [
        ("cpus", "\"cpus\" is not NAME:VALUE"),
        ("cpus:four", "cpus value \"four\" is not a number"),
        (
            "cpus:-1",
            "scalar -1 must be finite, non-negative and below 9e12",
        ),
        (
            "cpus:NaN",
            "scalar NaN must be finite, non-negative and below 9e12",
        ),
        ("ports:[5-1]", "range \"5-1\" ends before it begins"),
        ("ports:[1-2", "\"[1-2\" lacks a closing ']'"),
        ("ports:[x-2]", "range start \"x\" is not a number"),
        (":3", "a resource has an empty name"),
        (
            "c pus:3",
            "resource name \"c pus\" has characters outside [A-Za-z0-9_-./]",
        ),
    ];
    for (text, why) in cases {
        let err = Resources::parse(text).unwrap_err();
        assert_eq!(
            err,
            ResourcesError::Parse {
                text: text.into(),
                why: why.into()
            },
            "for {text:?}"
        );
    }
}

#[test]
fn subtracting_more_than_is_there_is_refused() {
    let agent = parse("cpus:4;mem:1024;ports:[100-200]");
    assert!(agent.checked_sub(&parse("cpus:5")).is_none());
    assert!(agent.checked_sub(&parse("ports:[150-250]")).is_none());
    assert!(agent.checked_sub(&parse("gpus:1")).is_none());
    let left = agent
        .checked_sub(&parse("cpus:1.5;ports:[120-130]"))
        .unwrap();
    assert_eq!(
        left.to_string(),
        "cpus:2.5;mem:1024;ports:[100-119,131-200]"
    );
}

#[test]
fn proto_form_rejects_what_mesos_rejects() {
    let mut bad = parse("cpus:1").to_proto();
    bad[0].scalar = Some(value::Scalar { value: -2.0 });
    assert!(Resources::from_proto(&bad).is_err());
    let mut no_value = parse("mem:1").to_proto();
    no_value[0].scalar = None;
    assert_eq!(
        Resources::from_proto(&no_value).unwrap_err().to_string(),
        "invalid resource \"mem\": no scalar value"
    );
}

fn arb_resources() -> impl Strategy<Value = Resources> {
    (
        proptest::option::of(0u64..64_000),
        proptest::option::of(0u64..1_000_000),
        proptest::collection::vec((0u64..2000, 0u64..50), 0..5),
        proptest::collection::btree_set("[a-d]", 0..4),
    )
        .prop_map(|(cpus, mem, ports, zones)| {
            let mut r = Resources::new();
            if let Some(c) = cpus {
                r = r.with_scalar("cpus", c as f64 / 1000.0);
            }
            if let Some(m) = mem {
                r = r.with_scalar("mem", m as f64);
            }
            r.with_ranges("ports", ports.into_iter().map(|(b, len)| (b, b + len)))
                .with_set("zones", zones)
        })
}

proptest! {
    #[test]
    fn text_form_round_trips(r in arb_resources()) {
        prop_assert_eq!(Resources::parse(&r.to_string()).unwrap(), r);
    }

    #[test]
    fn proto_form_round_trips(r in arb_resources()) {
        prop_assert_eq!(Resources::from_proto(&r.to_proto()).unwrap(), r);
    }

    #[test]
    fn adding_then_subtracting_gives_back_the_original(a in arb_resources(), b in arb_resources()) {
        let sum = a.add(&b);
        prop_assert!(sum.contains(&a));
        prop_assert!(sum.contains(&b));
        // Scalars are exact: (a + b) - b == a whenever a and b share no range or set item.
        let a_scalars = Resources { ranges: Default::default(), sets: Default::default(), ..a.clone() };
        let b_scalars = Resources { ranges: Default::default(), sets: Default::default(), ..b.clone() };
        prop_assert_eq!(a_scalars.add(&b_scalars).checked_sub(&b_scalars), Some(a_scalars));
    }

    #[test]
    fn addition_commutes(a in arb_resources(), b in arb_resources()) {
        prop_assert_eq!(a.add(&b), b.add(&a));
    }

    #[test]
    fn subtraction_succeeds_exactly_when_contained(a in arb_resources(), b in arb_resources()) {
        let diff = a.checked_sub(&b);
        prop_assert_eq!(diff.is_some(), a.contains(&b));
        if let Some(d) = diff {
            // Nothing is created or lost: what is left plus what was taken is what was there.
            prop_assert_eq!(d.add(&b), a.clone());
            prop_assert!(a.contains(&d));
        }
    }
}
