//! End-to-end tests: each starts real `cairn` processes on loopback, in temporary
//! directories, and owns them through guards that kill them (and the executors they
//! started) when the test ends.

mod bad_input;
mod components;
mod docker;
mod docker_image;
mod faults;
mod fetcher;
mod framework;
mod harness;
mod mesos_http;
mod native;
mod operator;
mod recovery;
mod restart;
mod wasm_tasks;
