//! Mesos' resources: named scalars (`cpus`, `mem`, `disk`), ranges (`ports`) and sets,
//! with the text format agents are configured with and the algebra the allocator
//! needs. Scalars are fixed point with three decimals, as in Mesos, so sums and
//! differences are exact and `a + b - b == a` always holds.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;

use thiserror::Error;

use crate::v1::{self, value};

/// Scalars are held in thousandths (Mesos' fixed-point precision).
const SCALE: f64 = 1000.0;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ResourcesError {
    #[error("cannot parse resources {text:?}: {why}")]
    Parse { text: String, why: String },
    #[error("invalid resource {name:?}: {why}")]
    Invalid { name: String, why: String },
}

/// A bag of resources: what an agent has, what an offer holds, what a task asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    // Shared until written (copy on write): offers, tasks and the allocator pass the
    // same resources around far more often than they change them.
    scalars: Arc<BTreeMap<String, u64>>,
    ranges: Arc<BTreeMap<String, Ranges>>,
    sets: Arc<BTreeMap<String, BTreeSet<String>>>,
}

/// Sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    pub fn new(items: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut v: Vec<(u64, u64)> = items.into_iter().filter(|(b, e)| b <= e).collect();
        v.sort_unstable();
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
        for (b, e) in v {
            match out.last_mut() {
                Some(last) if b <= last.1.saturating_add(1) => last.1 = last.1.max(e),
                _ => out.push((b, e)),
            }
        }
        Ranges(out)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().copied()
    }

    fn union(&self, other: &Ranges) -> Ranges {
        Ranges::new(self.iter().chain(other.iter()))
    }

    fn contains(&self, other: &Ranges) -> bool {
        other
            .iter()
            .all(|(b, e)| self.0.iter().any(|&(sb, se)| sb <= b && e <= se))
    }

    fn subtract(&self, other: &Ranges) -> Ranges {
        let mut out = Vec::new();
        for (mut b, e) in self.iter() {
            let mut alive = true;
            for (ob, oe) in other.iter() {
                if oe < b || ob > e {
                    continue;
                }
                if ob > b {
                    out.push((b, ob - 1));
                }
                if oe >= e {
                    alive = false;
                    break;
                }
                b = oe + 1;
            }
            if alive {
                out.push((b, e));
            }
        }
        Ranges::new(out)
    }
}

impl Resources {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.scalars.is_empty() && self.ranges.is_empty() && self.sets.is_empty()
    }

    /// Builder for scalars; `value` is rounded to Mesos' three decimals.
    pub fn with_scalar(mut self, name: &str, value: f64) -> Self {
        let milli = to_milli(value);
        if milli > 0 {
            let v = Arc::make_mut(&mut self.scalars)
                .entry(name.to_owned())
                .or_default();
            *v = v.saturating_add(milli);
        }
        self
    }

    pub fn with_ranges(mut self, name: &str, items: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let r = Ranges::new(items);
        if !r.is_empty() {
            let merged = self.ranges.get(name).map_or(r.clone(), |old| old.union(&r));
            Arc::make_mut(&mut self.ranges).insert(name.to_owned(), merged);
        }
        self
    }

    pub fn with_set(mut self, name: &str, items: impl IntoIterator<Item = String>) -> Self {
        let s: BTreeSet<String> = items.into_iter().collect();
        if !s.is_empty() {
            Arc::make_mut(&mut self.sets)
                .entry(name.to_owned())
                .or_default()
                .extend(s);
        }
        self
    }

    /// A scalar's value (0 when absent).
    pub fn scalar(&self, name: &str) -> f64 {
        self.scalars.get(name).map_or(0.0, |m| *m as f64 / SCALE)
    }

    pub fn ranges(&self, name: &str) -> Option<&Ranges> {
        self.ranges.get(name)
    }

    pub fn cpus(&self) -> f64 {
        self.scalar("cpus")
    }

    /// Memory in MB, Mesos' unit.
    pub fn mem(&self) -> f64 {
        self.scalar("mem")
    }

    pub fn disk(&self) -> f64 {
        self.scalar("disk")
    }

    /// `self + other`.
    pub fn add(&self, other: &Resources) -> Resources {
        // Cheap clones make the common cases free.
        if other.is_empty() {
            return self.clone();
        }
        if self.is_empty() {
            return other.clone();
        }
        let mut out = self.clone();
        for (name, m) in other.scalars.iter() {
            // Saturating: sums of hostile inputs must not wrap (or panic) past u64.
            let v = Arc::make_mut(&mut out.scalars)
                .entry(name.clone())
                .or_default();
            *v = v.saturating_add(*m);
        }
        for (name, r) in other.ranges.iter() {
            let merged = out.ranges.get(name).map_or(r.clone(), |old| old.union(r));
            Arc::make_mut(&mut out.ranges).insert(name.clone(), merged);
        }
        for (name, s) in other.sets.iter() {
            Arc::make_mut(&mut out.sets)
                .entry(name.clone())
                .or_default()
                .extend(s.iter().cloned());
        }
        out
    }

    /// Whether every resource in `other` is also in `self`.
    pub fn contains(&self, other: &Resources) -> bool {
        other
            .scalars
            .iter()
            .all(|(n, m)| self.scalars.get(n).is_some_and(|have| have >= m))
            && other
                .ranges
                .iter()
                .all(|(n, r)| self.ranges.get(n).is_some_and(|have| have.contains(r)))
            && other
                .sets
                .iter()
                .all(|(n, s)| self.sets.get(n).is_some_and(|have| have.is_superset(s)))
    }

    /// `self - other`, or `None` when `self` does not contain `other`.
    pub fn checked_sub(&self, other: &Resources) -> Option<Resources> {
        if !self.contains(other) {
            return None;
        }
        let mut out = self.clone();
        for (name, m) in other.scalars.iter() {
            let left = out.scalars[name] - m;
            if left == 0 {
                Arc::make_mut(&mut out.scalars).remove(name);
            } else {
                Arc::make_mut(&mut out.scalars).insert(name.clone(), left);
            }
        }
        for (name, r) in other.ranges.iter() {
            let left = out.ranges[name].subtract(r);
            if left.is_empty() {
                Arc::make_mut(&mut out.ranges).remove(name);
            } else {
                Arc::make_mut(&mut out.ranges).insert(name.clone(), left);
            }
        }
        for (name, s) in other.sets.iter() {
            let have = Arc::make_mut(&mut out.sets)
                .get_mut(name)
                .expect("contains() checked the set");
            have.retain(|i| !s.contains(i));
            if have.is_empty() {
                Arc::make_mut(&mut out.sets).remove(name);
            }
        }
        Some(out)
    }

    /// Parses Mesos' text format: `cpus:4;mem:8192;ports:[31000-32000];zones:{a,b}`.
    /// A `name(role)` prefix is accepted and the role ignored (reservations come later).
    pub fn parse(text: &str) -> Result<Resources, ResourcesError> {
        let err = |why: String| ResourcesError::Parse {
            text: text.to_owned(),
            why,
        };
        let mut out = Resources::new();
        for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            let (name, value) = item
                .split_once(':')
                .ok_or_else(|| err(format!("{item:?} is not NAME:VALUE")))?;
            let name = name.trim();
            let name = match name.split_once('(') {
                Some((n, role)) if role.ends_with(')') => n.trim(),
                Some(_) => return Err(err(format!("bad role in {name:?}"))),
                None => name,
            };
            check_name(name).map_err(err)?;
            let value = value.trim();
            if let Some(inner) = value.strip_prefix('[') {
                let inner = inner
                    .strip_suffix(']')
                    .ok_or_else(|| err(format!("{value:?} lacks a closing ']'")))?;
                let mut items = Vec::new();
                for part in inner.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                    let (b, e) = part
                        .split_once('-')
                        .ok_or_else(|| err(format!("range {part:?} is not BEGIN-END")))?;
                    let b: u64 = b
                        .trim()
                        .parse()
                        .map_err(|_| err(format!("range start {b:?} is not a number")))?;
                    let e: u64 = e
                        .trim()
                        .parse()
                        .map_err(|_| err(format!("range end {e:?} is not a number")))?;
                    if b > e {
                        return Err(err(format!("range {part:?} ends before it begins")));
                    }
                    items.push((b, e));
                }
                out = out.with_ranges(name, items);
            } else if let Some(inner) = value.strip_prefix('{') {
                let inner = inner
                    .strip_suffix('}')
                    .ok_or_else(|| err(format!("{value:?} lacks a closing '}}'")))?;
                let items = inner
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned);
                out = out.with_set(name, items);
            } else {
                let v: f64 = value
                    .parse()
                    .map_err(|_| err(format!("{name} value {value:?} is not a number")))?;
                check_scalar(v).map_err(err)?;
                out = out.with_scalar(name, v);
            }
        }
        Ok(out)
    }

    /// The protobuf form (one `Resource` per name).
    pub fn to_proto(&self) -> Vec<v1::Resource> {
        let mut out = Vec::new();
        for (name, m) in self.scalars.iter() {
            out.push(v1::Resource {
                name: name.clone(),
                r#type: value::Type::Scalar as i32,
                scalar: Some(value::Scalar {
                    value: *m as f64 / SCALE,
                }),
                ..Default::default()
            });
        }
        for (name, r) in self.ranges.iter() {
            out.push(v1::Resource {
                name: name.clone(),
                r#type: value::Type::Ranges as i32,
                ranges: Some(value::Ranges {
                    range: r
                        .iter()
                        .map(|(begin, end)| value::Range { begin, end })
                        .collect(),
                }),
                ..Default::default()
            });
        }
        for (name, s) in self.sets.iter() {
            out.push(v1::Resource {
                name: name.clone(),
                r#type: value::Type::Set as i32,
                set: Some(value::Set {
                    item: s.iter().cloned().collect(),
                }),
                ..Default::default()
            });
        }
        out
    }

    /// Reads resources from the wire, refusing what Mesos refuses: empty names,
    /// negative or non-finite scalars, inverted ranges, a type without its value.
    pub fn from_proto(items: &[v1::Resource]) -> Result<Resources, ResourcesError> {
        let mut out = Resources::new();
        for r in items {
            let invalid = |why: &str| ResourcesError::Invalid {
                name: r.name.clone(),
                why: why.to_owned(),
            };
            check_name(&r.name).map_err(|why| invalid(&why))?;
            match value::Type::try_from(r.r#type) {
                Ok(value::Type::Scalar) => {
                    let v = r
                        .scalar
                        .as_ref()
                        .ok_or_else(|| invalid("no scalar value"))?;
                    check_scalar(v.value).map_err(|why| invalid(&why))?;
                    out = out.with_scalar(&r.name, v.value);
                }
                Ok(value::Type::Ranges) => {
                    let v = r.ranges.as_ref().ok_or_else(|| invalid("no ranges"))?;
                    if v.range.iter().any(|x| x.begin > x.end) {
                        return Err(invalid("a range ends before it begins"));
                    }
                    out = out.with_ranges(&r.name, v.range.iter().map(|x| (x.begin, x.end)));
                }
                Ok(value::Type::Set) => {
                    let v = r.set.as_ref().ok_or_else(|| invalid("no set items"))?;
                    out = out.with_set(&r.name, v.item.iter().cloned());
                }
                _ => return Err(invalid("type must be SCALAR, RANGES or SET")),
            }
        }
        Ok(out)
    }
}

fn to_milli(value: f64) -> u64 {
    (value * SCALE).round() as u64
}

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a resource has an empty name".into());
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'/'))
    {
        return Err(format!(
            "resource name {name:?} has characters outside [A-Za-z0-9_-./]"
        ));
    }
    Ok(())
}

fn check_scalar(v: f64) -> Result<(), String> {
    // 2^53 thousandths: beyond it the fixed-point form loses exactness.
    if !v.is_finite() || !(0.0..=9.0e12).contains(&v) {
        return Err(format!(
            "scalar {v} must be finite, non-negative and below 9e12"
        ));
    }
    Ok(())
}

impl fmt::Display for Resources {
    /// The same text format [`Resources::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (name, m) in self.scalars.iter() {
            parts.push(format!("{name}:{}", *m as f64 / SCALE));
        }
        for (name, r) in self.ranges.iter() {
            let items: Vec<String> = r.iter().map(|(b, e)| format!("{b}-{e}")).collect();
            parts.push(format!("{name}:[{}]", items.join(",")));
        }
        for (name, s) in self.sets.iter() {
            let items: Vec<&str> = s.iter().map(String::as_str).collect();
            parts.push(format!("{name}:{{{}}}", items.join(",")));
        }
        f.write_str(&parts.join(";"))
    }
}

#[cfg(test)]
mod tests;
