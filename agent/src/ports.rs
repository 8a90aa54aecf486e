//! Mesos' `network/ports` isolator: a task in the host's network namespace listens
//! only on the ports it holds. A scan reads the host's listening TCP sockets
//! (`/proc/net/tcp` and `tcp6` of the agent, which runs in the host's namespace),
//! finds those a task's processes hold (their `socket:[inode]` descriptors; the
//! caller finds the processes, in the task's cgroups), and names the ports the task
//! does not hold. A socket of a network namespace of the task's
//! own is in no host table, so such a task may listen wherever it likes.
//!
//! Reading other users' descriptors needs root (or `CAP_SYS_PTRACE`): an agent
//! without it sees no task's sockets and so finds nothing.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use cairn_api::resources::Ranges;

/// A task whose listening ports a scan checks.
#[derive(Debug, Clone)]
pub struct Watched<K> {
    pub key: K,
    /// The task's processes.
    pub pids: BTreeSet<i32>,
    /// The ports it holds.
    pub allowed: Ranges,
}

/// A task found listening on ports it does not hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation<K> {
    pub key: K,
    pub ports: Vec<u16>,
}

/// Checks each watched task once against the host's listening sockets now.
pub fn scan<K>(watched: Vec<Watched<K>>) -> Vec<Violation<K>> {
    let listeners = host_listeners();
    if listeners.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    for w in watched {
        let ports: Vec<u16> = listening_ports(&w.pids, &listeners)
            .into_iter()
            .filter(|p| {
                !w.allowed
                    .iter()
                    .any(|(b, e)| b <= *p as u64 && *p as u64 <= e)
            })
            .collect();
        if !ports.is_empty() {
            found.push(Violation { key: w.key, ports });
        }
    }
    found
}

/// The host's listening TCP sockets: socket inode to port.
pub fn host_listeners() -> HashMap<u64, u16> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| parse_listeners(&text))
        .collect()
}

/// The LISTEN rows of a `/proc/net/tcp` table: (inode, local port).
fn parse_listeners(text: &str) -> Vec<(u64, u16)> {
    const LISTEN: &str = "0A";
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state, inode) = (fields.get(1)?, fields.get(3)?, fields.get(9)?);
            if *state != LISTEN {
                return None;
            }
            let port = u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()?;
            let inode = inode.parse::<u64>().ok().filter(|i| *i != 0)?;
            Some((inode, port))
        })
        .collect()
}

/// The ports of `listeners` whose sockets one of `pids` holds open.
pub fn listening_ports(pids: &BTreeSet<i32>, listeners: &HashMap<u64, u16>) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for pid in pids {
        let fds = Path::new("/proc").join(pid.to_string()).join("fd");
        for entry in std::fs::read_dir(&fds).into_iter().flatten().flatten() {
            let Ok(target) = std::fs::read_link(entry.path()) else {
                continue;
            };
            let inode = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok());
            if let Some(port) = inode.and_then(|i| listeners.get(&i)) {
                ports.insert(*port);
            }
        }
    }
    ports
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_rows_are_read() {
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
            0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0 100 0 0 10 0\n\
            1: 0100007F:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0 100 0 0 10 0\n\
            2: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 0 1 0 100 0 0 10 0\n\
            garbage\n";
        assert_eq!(parse_listeners(table), vec![(4242, 8080)]);
    }

    #[test]
    fn a_process_listening_socket_is_found_by_its_descriptor() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let me = BTreeSet::from([std::process::id() as i32]);
        assert!(listening_ports(&me, &host_listeners()).contains(&port));
        drop(listener);
        assert!(!listening_ports(&me, &host_listeners()).contains(&port));
    }
}
