//! `poll_oneoff` for p1 guests that a kill or a deadline can interrupt at once.
//!
//! The run's future is dropped on a kill or a deadline (see `store::guarded`), so a
//! guest asleep here stops at once, whatever it asked for; wasmtime-wasi's own
//! implementation would also do, but a sleep of `u64::MAX` ns must not overflow the
//! clock, and a guest that polls only clocks must not tie up a thread.
//!
//! The sandbox gives a guest only regular files (no sockets, no pipes), which are
//! always ready, so fd subscriptions are answered at once; clock subscriptions
//! (relative, or absolute on the realtime clock) are waited for.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker};

use wasmtime_wasi::p1::WasiP1Ctx;

use crate::store::StoreState;

type P1 = StoreState<WasiP1Ctx>;

const SUBSCRIPTION_BYTES: usize = 48;
const EVENT_BYTES: usize = 32;
/// Long waits are slept in steps no longer than this (the timer wheel's range is finite).
const STEP: Duration = Duration::from_secs(3600);

// WASI preview 1 numbers.
const ERRNO_SUCCESS: i32 = 0;
const ERRNO_FAULT: i32 = 21;
const ERRNO_INVAL: i32 = 28;
const ERRNO_NOTSUP: i32 = 58;
const EVENTTYPE_CLOCK: u8 = 0;
const CLOCK_REALTIME: u32 = 0;
const SUBCLOCK_ABSTIME: u16 = 1;

enum Wait {
    /// An fd subscription: ready now.
    Ready(u8),
    /// A clock subscription: ready at this instant.
    Until(Instant),
}

/// Replaces `wasi_snapshot_preview1::poll_oneoff` in a linker that has WASI p1.
pub(crate) fn add_to_linker(linker: &mut Linker<P1>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    linker.func_wrap_async(
        "wasi_snapshot_preview1",
        "poll_oneoff",
        |mut caller: Caller<'_, P1>, (subs, events, n, nevents): (i32, i32, i32, i32)| {
            Box::new(async move { poll_oneoff(&mut caller, subs, events, n, nevents).await })
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

async fn poll_oneoff(
    caller: &mut Caller<'_, P1>,
    subs: i32,
    events: i32,
    n: i32,
    nevents: i32,
) -> wasmtime::Result<i32> {
    let Some(memory) = caller.get_export("memory").and_then(|e| e.into_memory()) else {
        return Ok(ERRNO_INVAL);
    };
    let n = n as u32 as usize;
    if n == 0 {
        return Ok(ERRNO_INVAL);
    }
    let (subs, events, nevents) = (
        subs as u32 as usize,
        events as u32 as usize,
        nevents as u32 as usize,
    );
    let in_bounds = |at: usize, len: usize, data: &[u8]| {
        at.checked_add(len).is_some_and(|end| end <= data.len())
    };
    let now = Instant::now();
    let waits = {
        let data = memory.data(&caller);
        if !in_bounds(subs, n.saturating_mul(SUBSCRIPTION_BYTES), data)
            || !in_bounds(events, n.saturating_mul(EVENT_BYTES), data)
            || !in_bounds(nevents, 4, data)
        {
            return Ok(ERRNO_FAULT);
        }
        let subscriptions = data[subs..][..n * SUBSCRIPTION_BYTES].chunks_exact(SUBSCRIPTION_BYTES);
        match subscriptions
            .map(|s| read_subscription(s, now))
            .collect::<Result<Vec<_>, i32>>()
        {
            Ok(waits) => waits,
            Err(errno) => return Ok(errno),
        }
    };
    sleep_until_due(&waits).await;
    let now = Instant::now();
    write_events(memory.data_mut(&mut *caller), events, nevents, waits, now);
    Ok(ERRNO_SUCCESS)
}

/// One subscription's userdata and what it waits for, or the errno refusing it.
fn read_subscription(s: &[u8], now: Instant) -> Result<(u64, Wait), i32> {
    let userdata = u64::from_le_bytes(s[0..8].try_into().expect("8 bytes"));
    let tag = s[8];
    let wait = if tag == EVENTTYPE_CLOCK {
        let clock = u32::from_le_bytes(s[16..20].try_into().expect("4 bytes"));
        let timeout = u64::from_le_bytes(s[24..32].try_into().expect("8 bytes"));
        let flags = u16::from_le_bytes(s[40..42].try_into().expect("2 bytes"));
        let delay = if flags & SUBCLOCK_ABSTIME == 0 {
            Duration::from_nanos(timeout)
        } else if clock == CLOCK_REALTIME {
            let now_ns = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            Duration::from_nanos(timeout.saturating_sub(now_ns))
        } else {
            return Err(ERRNO_NOTSUP);
        };
        Wait::Until(
            now.checked_add(delay)
                .unwrap_or(now + Duration::from_secs(1 << 40)),
        )
    } else if tag <= 2 {
        Wait::Ready(tag)
    } else {
        return Err(ERRNO_INVAL);
    };
    Ok((userdata, wait))
}

/// Unless an fd subscription is ready now, sleeps until the earliest clock is due.
async fn sleep_until_due(waits: &[(u64, Wait)]) {
    let any_ready = waits.iter().any(|(_, w)| matches!(w, Wait::Ready(_)));
    if any_ready {
        return;
    }
    let earliest = waits
        .iter()
        .filter_map(|(_, w)| match w {
            Wait::Until(at) => Some(*at),
            Wait::Ready(_) => None,
        })
        .min()
        .expect("n > 0 and no fd subscriptions");
    loop {
        let now = Instant::now();
        if now >= earliest {
            break;
        }
        tokio::time::sleep((earliest - now).min(STEP)).await;
    }
}

/// Writes an event for each subscription ready at `now`, and their count at `nevents`
/// (both already bounds-checked).
fn write_events(
    data: &mut [u8],
    events: usize,
    nevents: usize,
    waits: Vec<(u64, Wait)>,
    now: Instant,
) {
    let mut written = 0usize;
    for (userdata, wait) in waits {
        let kind = match wait {
            Wait::Ready(kind) => kind,
            Wait::Until(at) if at <= now => EVENTTYPE_CLOCK,
            Wait::Until(_) => continue,
        };
        let e = &mut data[events + written * EVENT_BYTES..][..EVENT_BYTES];
        e.fill(0);
        e[0..8].copy_from_slice(&userdata.to_le_bytes());
        e[8..10].copy_from_slice(&(ERRNO_SUCCESS as u16).to_le_bytes());
        e[10] = kind;
        written += 1;
    }
    data[nevents..nevents + 4].copy_from_slice(&(written as u32).to_le_bytes());
}
