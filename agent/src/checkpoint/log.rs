//! The checkpoint's file format: an append-only log of length-prefixed, checksummed
//! protobuf records, written in batches with one `fdatasync` per batch (group commit).
//!
//! ```text
//! frame := len: u32 LE | crc32(len): u32 LE | crc32(payload): u32 LE | payload
//! ```
//!
//! A crash can only tear the batch being written, which nothing outside the agent has
//! seen yet (effects wait for the sync). So an invalid frame at the very end of the
//! file is a torn write and is cut off; an invalid frame with data after it is
//! corruption, and recovery refuses to guess. The length has its own checksum, so a
//! damaged length is never mistaken for a frame running past the end.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use prost::Message;

/// No record is this large; a length beyond it is damage, not data.
const MAX_RECORD_BYTES: usize = 64 << 20;
const HEADER: usize = 12;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("reading checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "checkpoint {path} is corrupt at byte {offset} ({what}); refusing to guess which tasks it held"
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        what: String,
    },
}

/// An open log: what is committed is on disk; what is pending is not yet.
pub struct Log {
    path: PathBuf,
    file: File,
    /// Bytes known to be durable; a failed write is cut back to here.
    committed: u64,
    pending: Vec<u8>,
    pending_records: usize,
}

impl Log {
    /// Opens (or creates) the log and returns the records it holds, cutting off a
    /// torn final batch.
    pub fn open<M: Message + Default>(path: &Path) -> Result<(Self, Vec<M>), LogError> {
        let io = |source| LogError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        // Every framework's tasks are in it: the agent's alone.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (records, valid) = decode_all(path, &bytes)?;
        if valid < bytes.len() as u64 {
            tracing::warn!(
                path = %path.display(),
                torn_bytes = bytes.len() as u64 - valid,
                "cutting off a torn final write in the checkpoint"
            );
            file.set_len(valid).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        file.seek(SeekFrom::Start(valid)).map_err(io)?;
        let log = Self {
            path: path.to_owned(),
            file,
            committed: valid,
            pending: Vec::new(),
            pending_records: 0,
        };
        Ok((log, records))
    }

    /// Buffers a record for the next commit.
    pub fn append<M: Message>(&mut self, record: &M) {
        encode_frame(record, &mut self.pending);
        self.pending_records += 1;
    }

    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub fn pending_records(&self) -> usize {
        self.pending_records
    }

    /// Bytes on disk: what compaction weighs against the live state.
    pub fn committed_bytes(&self) -> u64 {
        self.committed
    }

    /// Writes every pending record and syncs once. On failure nothing is lost from
    /// memory: the file is cut back to its last durable length and the records stay
    /// pending for the next attempt.
    pub fn commit(&mut self) -> std::io::Result<usize> {
        if self.pending.is_empty() {
            return Ok(0);
        }
        let result = self
            .file
            .write_all(&self.pending)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = result {
            let _ = self.file.set_len(self.committed);
            let _ = self.file.seek(SeekFrom::Start(self.committed));
            return Err(e);
        }
        self.committed += self.pending.len() as u64;
        self.pending.clear();
        Ok(std::mem::take(&mut self.pending_records))
    }

    /// Replaces the whole log with `records` (the live state), crash-safely: a new
    /// file is written and synced, renamed over the old one, and the directory synced.
    /// Pending records must have been committed first.
    pub fn rewrite<M: Message>(&mut self, records: &[M]) -> std::io::Result<()> {
        debug_assert!(self.pending.is_empty());
        let mut bytes = Vec::new();
        for record in records {
            encode_frame(record, &mut bytes);
        }
        let tmp = self.path.with_extension("compacting");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        std::fs::rename(&tmp, &self.path)?;
        // From the rename on, the new file is the log: appends must go to it even if
        // the directory sync below fails.
        self.file = file;
        self.committed = bytes.len() as u64;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

fn encode_frame<M: Message>(record: &M, out: &mut Vec<u8>) {
    let payload = record.encode_to_vec();
    let len = (payload.len() as u32).to_le_bytes();
    out.extend_from_slice(&len);
    out.extend_from_slice(&crc32fast::hash(&len).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// Decodes every frame; returns the records and the length of the valid prefix.
fn decode_all<M: Message + Default>(path: &Path, bytes: &[u8]) -> Result<(Vec<M>, u64), LogError> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        match decode_frame::<M>(&bytes[at..]) {
            Ok((record, used)) => {
                records.push(record);
                at += used;
            }
            Err(what) => {
                if is_torn_tail(&bytes[at..]) {
                    return Ok((records, at as u64));
                }
                return Err(LogError::Corrupt {
                    path: path.to_owned(),
                    offset: at as u64,
                    what,
                });
            }
        }
    }
    Ok((records, at as u64))
}

fn decode_frame<M: Message + Default>(bytes: &[u8]) -> Result<(M, usize), String> {
    if bytes.len() < HEADER {
        return Err("truncated header".into());
    }
    let Some(len) = valid_len(bytes) else {
        return Err("damaged record header".into());
    };
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    if len == 0 || len > MAX_RECORD_BYTES {
        return Err(format!("impossible record length {len}"));
    }
    let Some(payload) = bytes.get(HEADER..HEADER + len) else {
        return Err("record runs past the end of the file".into());
    };
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let record = M::decode(payload).map_err(|e| format!("undecodable record: {e}"))?;
    Ok((record, HEADER + len))
}

/// Whether an invalid frame is the torn end of the last write: its header is cut
/// short, it runs past the end of the file, it is the file's final frame, or what
/// follows it is the zero fill a crash leaves in a file extended but not written.
fn is_torn_tail(rest: &[u8]) -> bool {
    if rest.len() < HEADER || rest.iter().all(|b| *b == 0) {
        return true;
    }
    valid_len(rest).is_some_and(|len| HEADER + len >= rest.len())
}

/// The frame's length, if its checksum holds.
fn valid_len(header: &[u8]) -> Option<usize> {
    let len: [u8; 4] = header.get(0..4)?.try_into().ok()?;
    let crc = u32::from_le_bytes(header.get(4..8)?.try_into().ok()?);
    (crc32fast::hash(&len) == crc).then_some(u32::from_le_bytes(len) as usize)
}

#[cfg(test)]
mod tests {
    use cairn_api::v1::AgentId;

    use super::*;

    fn id(v: &str) -> AgentId {
        AgentId { value: v.into() }
    }

    fn reopen(path: &Path) -> Result<Vec<AgentId>, LogError> {
        Log::open::<AgentId>(path).map(|(_, r)| r)
    }

    #[test]
    fn committed_records_come_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, records) = Log::open::<AgentId>(&path).unwrap();
        assert!(records.is_empty());
        log.append(&id("a"));
        log.append(&id("b"));
        assert_eq!(log.commit().unwrap(), 2);
        log.append(&id("c"));
        // Not committed: a crash now loses it, and nothing was told about it.
        assert_eq!(reopen(&path).unwrap(), vec![id("a"), id("b")]);
        log.commit().unwrap();
        assert_eq!(reopen(&path).unwrap(), vec![id("a"), id("b"), id("c")]);
    }

    #[test]
    fn a_torn_final_write_is_cut_off_and_appends_continue_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = Log::open::<AgentId>(&path).unwrap();
        log.append(&id("kept"));
        log.commit().unwrap();
        drop(log);
        let good = std::fs::metadata(&path).unwrap().len();
        // Half of a frame, as a crash mid-write leaves it.
        let mut frame = Vec::new();
        encode_frame(&id("torn"), &mut frame);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&frame[..frame.len() / 2]).unwrap();
        drop(f);
        let (mut log, records) = Log::open::<AgentId>(&path).unwrap();
        assert_eq!(records, vec![id("kept")]);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), good);
        log.append(&id("next"));
        log.commit().unwrap();
        assert_eq!(reopen(&path).unwrap(), vec![id("kept"), id("next")]);
    }

    #[test]
    fn zero_fill_after_a_crash_is_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = Log::open::<AgentId>(&path).unwrap();
        log.append(&id("kept"));
        log.commit().unwrap();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0; 300]).unwrap();
        drop(f);
        assert_eq!(reopen(&path).unwrap(), vec![id("kept")]);
    }

    #[test]
    fn damage_before_the_end_is_corruption_not_a_guess() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = Log::open::<AgentId>(&path).unwrap();
        for v in ["one", "two", "three"] {
            log.append(&id(v));
        }
        log.commit().unwrap();
        drop(log);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER + 2] ^= 0xff; // inside the first record's payload
        std::fs::write(&path, &bytes).unwrap();
        let err = reopen(&path).unwrap_err();
        assert!(matches!(err, LogError::Corrupt { offset: 0, .. }), "{err}");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        // A damaged length is caught by its own checksum, not read as a torn tail.
        let mut bytes2 = std::fs::read(&path).unwrap();
        bytes2[HEADER + 2] ^= 0xff;
        bytes2[1] = 0x7f;
        std::fs::write(&path, &bytes2).unwrap();
        let err = reopen(&path).unwrap_err();
        assert!(err.to_string().contains("damaged record header"), "{err}");
        std::fs::write(&path, &bytes).unwrap();
        // And nothing was cut: the evidence stays for the operator.
        assert_eq!(std::fs::read(&path).unwrap(), bytes);
    }

    #[test]
    fn rewrite_replaces_the_log_and_later_appends_follow_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let (mut log, _) = Log::open::<AgentId>(&path).unwrap();
        for i in 0..100 {
            log.append(&id(&format!("old-{i}")));
        }
        log.commit().unwrap();
        let before = log.committed_bytes();
        log.rewrite(&[id("live")]).unwrap();
        assert!(log.committed_bytes() < before);
        log.append(&id("after"));
        log.commit().unwrap();
        assert_eq!(reopen(&path).unwrap(), vec![id("live"), id("after")]);
    }
}
