//! Which compiled artifacts go when the artifacts directory holds more than its
//! bound (`--compile-cache-size`): the least recently used first, but none used in
//! the last [`EVICTABLE_AFTER`], so an artifact handed to a launch is still there when
//! its executor loads it. An artifact's last use is the later of its file's
//! modification time (when it was stored) and when a task last got it.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// An artifact used this recently is never evicted.
pub const EVICTABLE_AFTER: Duration = Duration::from_secs(15 * 60);

/// One artifact file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub name: String,
    pub bytes: u64,
    pub modified: SystemTime,
}

/// The artifact files in `dir` (not those mid-write), with their sizes.
pub fn scan(dir: &Path) -> Vec<Stored> {
    let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
    entries
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            // `symlink_metadata` through the entry: no link is followed.
            let meta = entry.metadata().ok()?;
            let artifact = name.ends_with(".cwasm") && meta.is_file();
            artifact.then(|| Stored {
                name,
                bytes: meta.len(),
                modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            })
        })
        .collect()
}

/// The names of the files to remove so that what stays holds at most `max_bytes`:
/// least recently used first (`used`: when a task last got one, by name), none
/// used since `now - EVICTABLE_AFTER`. Fewer than needed when the rest are recent.
pub fn victims(
    stored: Vec<Stored>,
    used: &HashMap<String, SystemTime>,
    max_bytes: u64,
    now: SystemTime,
) -> Vec<String> {
    let mut total: u64 = stored.iter().map(|s| s.bytes).sum();
    if total <= max_bytes {
        return Vec::new();
    }
    let last_use = |s: &Stored| used.get(&s.name).map_or(s.modified, |u| s.modified.max(*u));
    let mut by_age: Vec<(SystemTime, Stored)> =
        stored.into_iter().map(|s| (last_use(&s), s)).collect();
    by_age.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.name.cmp(&b.1.name)));
    let cutoff = now
        .checked_sub(EVICTABLE_AFTER)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let mut out = Vec::new();
    for (at, stored) in by_age {
        if total <= max_bytes || at > cutoff {
            break;
        }
        total -= stored.bytes;
        out.push(stored.name);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(name: &str, bytes: u64, age_secs: u64, now: SystemTime) -> Stored {
        Stored {
            name: name.into(),
            bytes,
            modified: now - Duration::from_secs(age_secs),
        }
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_until_the_rest_fits() {
        let now = SystemTime::now();
        let files = vec![
            stored("new.cwasm", 100, 3600, now),
            stored("old.cwasm", 100, 7200, now),
            stored("older.cwasm", 100, 9000, now),
        ];
        // `older` was stored first but used an hour ago: `old` is the oldest use.
        let used = HashMap::from([("older.cwasm".to_owned(), now - Duration::from_secs(3000))]);
        assert_eq!(victims(files.clone(), &used, 200, now), vec!["old.cwasm"]);
        assert_eq!(
            victims(files.clone(), &used, 100, now),
            vec!["old.cwasm", "new.cwasm"]
        );
        assert!(victims(files, &used, 300, now).is_empty());
    }

    #[test]
    fn nothing_used_recently_is_evicted_even_past_the_bound() {
        let now = SystemTime::now();
        let files = vec![
            stored("stored-now.cwasm", 100, 1, now),
            stored("stale.cwasm", 100, 7200, now),
            stored("got-now.cwasm", 100, 7200, now),
        ];
        let used = HashMap::from([("got-now.cwasm".to_owned(), now)]);
        assert_eq!(victims(files, &used, 0, now), vec!["stale.cwasm"]);
    }

    #[test]
    fn a_scan_sees_artifact_files_only_and_follows_no_link() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.cwasm"), [0u8; 10]).unwrap();
        std::fs::write(dir.path().join(".tmp-1-2"), [0u8; 10]).unwrap();
        let outside = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(outside.path(), [0u8; 1000]).unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("link.cwasm")).unwrap();
        let found = scan(dir.path());
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!((found[0].name.as_str(), found[0].bytes), ("a.cwasm", 10));
    }
}
