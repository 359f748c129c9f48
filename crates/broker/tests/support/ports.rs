//! Loopback ports for in-process brokers and nameservers of the broker crate's tests (and tests/scale.rs),
//! shared by `#[path]`.
//!
//! Not ports from `bind(":0")`: a port the kernel chose and the test released is in the ephemeral range
//! (32768–60999 by default), where any outgoing connection — the brokers' Raft and client connections of the
//! tests running in parallel — may take it as its source port before the broker binds it, and the test then
//! fails with AddrInUse (seen in CI: `deposed_leader`, "start broker: Listen { addr: 127.0.0.1:43143, … }").
//! Ports come from a fixed range below it instead, from a start that differs per process, each checked by
//! binding it, and none is handed out twice by this process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

const PORTS_FROM: u32 = 20_000;
const PORTS_COUNT: u32 = 12_000;

/// A free loopback port outside the kernel's ephemeral range.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(7919);
    for _ in 0..PORTS_COUNT {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = (PORTS_FROM + start.wrapping_add(n) % PORTS_COUNT) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {PORTS_FROM}..{}", PORTS_FROM + PORTS_COUNT)
}
