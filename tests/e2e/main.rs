//! End-to-end tests: each starts real `cairn` processes on loopback, in temporary
//! directories, and owns them through guards that kill them (and the executors they
//! started) when the test ends. The harness they share is `cairn-test-support`.

use cairn_test_support::harness::Cairn;

mod acls;
mod authn;
mod bad_input;
mod compile;
mod components;
mod docker;
mod docker_restart;
mod executors;
mod faults;
mod fetcher;
mod https;
mod links;
mod mesos_http;
mod native;
mod operator;
mod ports;
mod recovery;
mod restart;
mod tenants;
mod tokens;
mod wasm_tasks;

/// The `cairn` binary under test (Cargo builds it for the root package's tests).
const CAIRN: Cairn = Cairn::at(env!("CARGO_BIN_EXE_cairn"));
