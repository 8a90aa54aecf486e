//! The socket's door, with real Unix sockets: this test process is the peer, a
//! stranger until it is made a known executor.

use std::sync::Arc;
use std::time::Duration;

use cairn_api::internal::{ExecutorCall, ExecutorSubscribe, executor_call};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;
use tokio::sync::mpsc;

use super::{KnownExecutors, SocketLimits, serve_socket};
use crate::framing::write_frame;
use crate::input::Input;

const DEADLINE: Duration = Duration::from_secs(20);

struct Door {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    known: Arc<KnownExecutors>,
    core: mpsc::Receiver<Input>,
}

fn open(limits: SocketLimits) -> Door {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("executor.sock");
    let listener = tokio::net::UnixListener::bind(&path).unwrap();
    let known = Arc::new(KnownExecutors::default());
    let (tx, core) = mpsc::channel(16);
    tokio::spawn(serve_socket(listener, tx, known.clone(), limits));
    Door {
        _dir: dir,
        path,
        known,
        core,
    }
}

/// Connects and sends a SUBSCRIBE.
async fn subscribe(path: &std::path::Path) -> UnixStream {
    let mut stream = UnixStream::connect(path).await.unwrap();
    let call = ExecutorCall {
        call: Some(executor_call::Call::Subscribe(ExecutorSubscribe {
            pid: std::process::id(),
            ..Default::default()
        })),
    };
    write_frame(&mut stream, &call).await.unwrap();
    stream
}

/// Whether the agent closed the connection (within the deadline).
async fn closed(stream: &mut UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(
        tokio::time::timeout(DEADLINE, stream.read(&mut byte)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

/// Whether the connection is still open and unanswered right now.
fn waiting(stream: &UnixStream) -> bool {
    let mut byte = [0u8; 1];
    matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}

/// A stranger (a stale executor, say) is heard out only briefly: after the wait for
/// its pid, a small first frame goes to the core, which refuses it; a large one is
/// not even read.
#[tokio::test]
async fn a_stranger_s_first_frame_is_read_only_if_small() {
    let limits = SocketLimits {
        admit_within: Duration::from_millis(200),
        stranger_frame_bytes: 1024,
        ..SocketLimits::default()
    };
    let mut door = open(limits);
    let mut large = UnixStream::connect(&door.path).await.unwrap();
    large.write_all(&(64u32 << 10).to_be_bytes()).await.unwrap();
    assert!(closed(&mut large).await, "a large first frame is refused");
    assert!(door.core.try_recv().is_err(), "nothing reached the core");
    let _small = subscribe(&door.path).await;
    let input = tokio::time::timeout(DEADLINE, door.core.recv()).await;
    assert!(
        matches!(input, Ok(Some(Input::ExecutorSubscribed { .. }))),
        "a small SUBSCRIBE goes to the core, which judges it"
    );
}

#[tokio::test]
async fn a_known_executor_is_heard() {
    let mut door = open(SocketLimits::default());
    door.known.add(std::process::id());
    let _stream = subscribe(&door.path).await;
    let input = tokio::time::timeout(DEADLINE, door.core.recv()).await;
    let Ok(Some(Input::ExecutorSubscribed { pid, .. })) = input else {
        panic!("no subscription reached the core");
    };
    assert_eq!(pid, Some(std::process::id() as i32));
}

/// A peer connecting before the agent notes its pid (a just-spawned executor) waits
/// for it; past `waiting_per_user` such peers of one user, more are closed at once.
#[tokio::test]
async fn unknown_peers_wait_a_while_and_only_a_few_at_once() {
    let limits = SocketLimits {
        admit_within: Duration::from_secs(600),
        waiting_per_user: 2,
        ..SocketLimits::default()
    };
    let mut door = open(limits);
    let (first, second) = (subscribe(&door.path).await, subscribe(&door.path).await);
    let mut third = subscribe(&door.path).await;
    assert!(closed(&mut third).await, "past the cap: closed at once");
    assert!(waiting(&first) && waiting(&second));
    assert!(door.core.try_recv().is_err());
    // The pid becomes known: both waiting connections are heard.
    door.known.add(std::process::id());
    for _ in 0..2 {
        let input = tokio::time::timeout(DEADLINE, door.core.recv()).await;
        assert!(
            matches!(input, Ok(Some(Input::ExecutorSubscribed { .. }))),
            "a waiting connection was admitted"
        );
    }
}

#[tokio::test]
async fn an_executor_that_never_subscribes_is_closed() {
    let limits = SocketLimits {
        subscribe_within: Duration::from_millis(200),
        ..SocketLimits::default()
    };
    let mut door = open(limits);
    door.known.add(std::process::id());
    let mut stream = UnixStream::connect(&door.path).await.unwrap();
    assert!(closed(&mut stream).await);
    assert!(door.core.try_recv().is_err());
}
