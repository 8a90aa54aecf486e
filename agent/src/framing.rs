//! The executor API's wire format: protobuf messages, each behind a 4-byte
//! big-endian length, on the agent's Unix socket.

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// No executor message comes near this; a larger length means a broken or hostile peer.
pub const MAX_FRAME_BYTES: u32 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("executor socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {max}-byte limit")]
    TooLarge { len: u32, max: u32 },
    #[error("malformed executor message: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Appends one frame to `buf`.
pub fn encode_frame<M: Message>(message: &M, buf: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = message.encoded_len();
    let max = MAX_FRAME_BYTES;
    let len = u32::try_from(len).map_err(|_| FrameError::TooLarge { len: u32::MAX, max })?;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    buf.reserve(4 + len as usize);
    buf.extend_from_slice(&len.to_be_bytes());
    message
        .encode(buf)
        .expect("a Vec grows to hold any message");
    Ok(())
}

pub async fn write_frame<W, M>(w: &mut W, message: &M) -> Result<(), FrameError>
where
    W: AsyncWriteExt + Unpin,
    M: Message,
{
    let mut buf = Vec::new();
    encode_frame(message, &mut buf)?;
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

/// Writes `first` and whatever else is already queued behind it (up to `MAX_BATCH`)
/// in one write: under a burst of short tasks, a write per message was most of
/// the socket's cost.
pub async fn write_batch<W, M>(
    w: &mut W,
    first: M,
    queue: &mut tokio::sync::mpsc::Receiver<M>,
    buf: &mut Vec<u8>,
) -> Result<(), FrameError>
where
    W: AsyncWriteExt + Unpin,
    M: Message,
{
    const MAX_BATCH: usize = 256;
    buf.clear();
    encode_frame(&first, buf)?;
    for _ in 1..MAX_BATCH {
        match queue.try_recv() {
            Ok(next) => encode_frame(&next, buf)?,
            Err(_) => break,
        }
    }
    w.write_all(buf).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one frame; `Ok(None)` is a clean end of stream between frames.
pub async fn read_frame<R, M>(r: &mut R) -> Result<Option<M>, FrameError>
where
    R: AsyncReadExt + Unpin,
    M: Message + Default,
{
    read_frame_of_at_most(r, MAX_FRAME_BYTES).await
}

/// Reads one frame of at most `max` bytes.
pub async fn read_frame_of_at_most<R, M>(r: &mut R, max: u32) -> Result<Option<M>, FrameError>
where
    R: AsyncReadExt + Unpin,
    M: Message + Default,
{
    let mut len = [0u8; 4];
    // End of stream is clean only before a frame's first byte; a cut length is not.
    if r.read(&mut len[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut len[1..]).await?;
    let len = u32::from_be_bytes(len);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let mut buf = vec![0u8; len as usize];
    r.read_exact(&mut buf).await?;
    Ok(Some(M::decode(buf.as_slice())?))
}

#[cfg(test)]
mod tests {
    use cairn_api::internal::{ExecutorCall, ExecutorHeartbeat, executor_call};

    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_oversized_lengths_are_refused() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        let call = ExecutorCall {
            call: Some(executor_call::Call::Heartbeat(ExecutorHeartbeat::default())),
        };
        write_frame(&mut a, &call).await.unwrap();
        let got: Option<ExecutorCall> = read_frame(&mut b).await.unwrap();
        assert_eq!(got, Some(call));

        a.write_all(&(MAX_FRAME_BYTES + 1).to_be_bytes())
            .await
            .unwrap();
        let err = read_frame::<_, ExecutorCall>(&mut b).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "frame of {} bytes exceeds the {MAX_FRAME_BYTES}-byte limit",
                MAX_FRAME_BYTES + 1
            )
        );
        drop(a);
    }

    #[tokio::test]
    async fn a_stream_cut_inside_a_frame_is_an_error_not_a_clean_end() {
        for cut in [0usize, 1, 3, 4, 5, 10] {
            let (mut a, mut b) = tokio::io::duplex(1024);
            let mut frame = 20u32.to_be_bytes().to_vec();
            frame.resize(24, 0);
            a.write_all(&frame[..cut]).await.unwrap();
            drop(a);
            let got = read_frame::<_, ExecutorCall>(&mut b).await;
            if cut == 0 {
                assert!(matches!(got, Ok(None)), "cut at {cut}: {got:?}");
            } else {
                assert!(
                    matches!(got, Err(FrameError::Io(_))),
                    "cut at {cut}: {got:?}"
                );
            }
        }
    }
}
