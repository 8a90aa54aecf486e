//! The agent's end of the executor API: accepts executor processes' connections on
//! the agent's Unix socket, and turns their frames into core inputs.

use cairn_api::internal::{ExecutorCall, ExecutorEvent, executor_call};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

use crate::framing::{read_frame, write_batch};
use crate::input::Input;

/// Accepts executor connections on the agent's socket for as long as the agent runs.
pub async fn serve_socket(listener: UnixListener, core: mpsc::Sender<Input>) {
    let mut next_conn = 0u64;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "executor socket accept failed");
                continue;
            }
        };
        next_conn += 1;
        tokio::spawn(executor_connection(stream, next_conn, core.clone()));
    }
}

async fn executor_connection(stream: UnixStream, conn: u64, core: mpsc::Sender<Input>) {
    let pid = stream.peer_cred().ok().and_then(|c| c.pid());
    let (reader, mut writer) = stream.into_split();
    // Buffered: a burst of updates is read in a few syscalls, not three per frame.
    let mut reader = tokio::io::BufReader::with_capacity(64 << 10, reader);
    let first: Option<ExecutorCall> = match read_frame(&mut reader).await {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "bad first message on the executor socket");
            return;
        }
    };
    let Some(ExecutorCall {
        call: Some(executor_call::Call::Subscribe(subscribe)),
    }) = first
    else {
        tracing::warn!("executor connection did not start with SUBSCRIBE");
        return;
    };
    // An executor of a version before executor ids names only its framework.
    let executor_id = match subscribe.executor_id.clone().unwrap_or_default().value {
        id if id.is_empty() => {
            let fw = subscribe.framework_id.clone().unwrap_or_default();
            cairn_api::ids::executor_id_for(&fw).value
        }
        id => id,
    };
    let (tx, mut rx) = mpsc::channel::<ExecutorEvent>(1024);
    let mut writer_task = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(event) = rx.recv().await {
            if write_batch(&mut writer, event, &mut rx, &mut buf)
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let _ = core
        .send(Input::ExecutorSubscribed {
            executor_id: executor_id.clone(),
            conn,
            pid,
            subscribe,
            to_executor: tx,
        })
        .await;
    loop {
        // The core drops its sender when it refuses the subscription (or takes a newer
        // connection of the executor's): the writer ends, and so does this connection,
        // so a refused peer's frames never reach the core.
        let read = tokio::select! {
            read = read_frame::<_, ExecutorCall>(&mut reader) => read,
            _ = &mut writer_task => break,
        };
        match read {
            Ok(Some(ExecutorCall { call: Some(call) })) => {
                let input = Input::FromExecutor {
                    executor_id: executor_id.clone(),
                    conn,
                    call,
                };
                if core.send(input).await.is_err() {
                    break;
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(executor_id, error = %e, "executor connection dropped");
                break;
            }
        }
    }
    writer_task.abort();
    let _ = core
        .send(Input::ExecutorDisconnected { executor_id, conn })
        .await;
}
