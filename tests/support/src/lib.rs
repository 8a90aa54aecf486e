//! What Cairn's end-to-end tests (`tests/e2e`) and benchmarks (`benches/`) share:
//! real `cairn` daemons owned through guards, a plain-HTTP Mesos framework, the local
//! Docker image the tests run, a stand-in master for measuring one agent alone, and a
//! CA for https mirrors.
//!
//! The `cairn` binary is the caller's: Cargo tells only the root package's integration
//! tests and benches where it is (`env!("CARGO_BIN_EXE_cairn")`), so they hand it in
//! as a [`harness::Cairn`].

pub mod docker_image;
pub mod fake_master;
pub mod framework;
pub mod harness;
pub mod tls;
