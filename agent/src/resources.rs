//! What an agent offers: detected from the machine unless `--resources` says otherwise,
//! the way a Mesos agent fills in what its flag leaves out.

use std::path::Path;

use cairn_api::v1::{Attribute, value};
use cairn_api::{Resources, ResourcesError};

/// Memory kept back for the host and the agent itself (Mesos keeps min(1 GB, 50%)).
fn reserved_mem_mb(total_mb: f64) -> f64 {
    (total_mb * 0.5).min(1024.0)
}

/// Disk kept back for the host (Mesos keeps min(5 GB, 50%)).
fn reserved_disk_mb(total_mb: f64) -> f64 {
    (total_mb * 0.5).min(5120.0)
}

/// Why `--resources` or `--attributes` text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlagError {
    #[error(transparent)]
    Resources(#[from] ResourcesError),
    #[error("cannot parse attributes {text:?}: {item:?} is not NAME:VALUE")]
    AttributeShape { text: String, item: String },
    #[error("cannot parse attributes {text:?}: {item:?} has an empty name or value")]
    AttributeEmpty { text: String, item: String },
}

/// Resources from `--resources` text, with cpus, mem, disk and ports detected for
/// whatever the text leaves out.
pub fn agent_resources(flag: Option<&str>, work_dir: &Path) -> Result<Resources, FlagError> {
    let given = match flag {
        Some(text) => Resources::parse(text)?,
        None => Resources::new(),
    };
    let mut detected = Resources::new();
    if given.scalar("cpus") == 0.0 {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        detected = detected.with_scalar("cpus", cpus as f64);
    }
    if given.scalar("mem") == 0.0 {
        let total = total_memory_mb().unwrap_or(1024.0);
        detected = detected.with_scalar("mem", (total - reserved_mem_mb(total)).floor());
    }
    if given.scalar("disk") == 0.0
        && let Some(total) = disk_mb(work_dir)
    {
        detected = detected.with_scalar("disk", (total - reserved_disk_mb(total)).floor());
    }
    if given.ranges("ports").is_none() {
        detected = detected.with_ranges("ports", [(31000, 32000)]);
    }
    Ok(given.add(&detected))
}

fn total_memory_mb() -> Option<f64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn disk_mb(dir: &Path) -> Option<f64> {
    let stat = nix::sys::statvfs::statvfs(dir).ok()?;
    Some(stat.blocks() as f64 * stat.fragment_size() as f64 / (1024.0 * 1024.0))
}

/// Parses `--attributes 'rack:r1;zone:a'` into text attributes (numbers stay text:
/// Cairn treats attributes as labels for placement, not as quantities).
pub fn parse_attributes(text: &str) -> Result<Vec<Attribute>, FlagError> {
    let mut out = Vec::new();
    for item in text.split(';').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, val) = item
            .split_once(':')
            .ok_or_else(|| FlagError::AttributeShape {
                text: text.to_owned(),
                item: item.to_owned(),
            })?;
        let (name, val) = (name.trim(), val.trim());
        if name.is_empty() || val.is_empty() {
            return Err(FlagError::AttributeEmpty {
                text: text.to_owned(),
                item: item.to_owned(),
            });
        }
        out.push(Attribute {
            name: name.to_owned(),
            r#type: value::Type::Text as i32,
            text: Some(value::Text {
                value: val.to_owned(),
            }),
            ..Default::default()
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_resources_win_and_the_rest_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let r = agent_resources(Some("cpus:3;mem:100"), dir.path()).unwrap();
        assert_eq!(r.cpus(), 3.0);
        assert_eq!(r.mem(), 100.0);
        assert!(r.disk() > 0.0);
        assert!(r.ranges("ports").is_some());
    }

    #[test]
    fn bad_resources_and_attributes_say_why() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            agent_resources(Some("cpus:lots"), dir.path())
                .unwrap_err()
                .to_string(),
            "cannot parse resources \"cpus:lots\": cpus value \"lots\" is not a number"
        );
        assert_eq!(
            parse_attributes("rack").unwrap_err().to_string(),
            "cannot parse attributes \"rack\": \"rack\" is not NAME:VALUE"
        );
        let attrs = parse_attributes("rack:r1; zone:a").unwrap();
        assert_eq!(attrs.len(), 2);
        assert_eq!(attrs[1].text.as_ref().unwrap().value, "a");
    }
}
