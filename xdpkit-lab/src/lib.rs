//! Test support, benchmarks and the demo for xdpkit; not part of the
//! library (`publish = false`).
//!
//! - [`lab`]: network namespaces and veth pairs for tests, demos and
//!   benchmarks, removed again when dropped;
//! - [`etcd`]: a real etcd server (Debian's etcd-server) on free ports
//!   with its own data, for the fleet tests;
//! - [`fleet`]: three hosts following etcd (namespaces, etcd, an agent
//!   per host), for the fleet's test, benchmark and demo;
//! - [`benchkit`]: the harness behind `cargo xtask bench ...`: a one-core
//!   lab, trials with medians, CSV and PNG bars.
//!
//! The examples are what `cargo xtask` runs: `demo` (`cargo xtask demo`),
//! `bench_firewall`, `bench_compare`, `bench_stages` and `bench_lb` (`cargo
//! xtask bench firewall|compare|stages|lb`).

pub mod benchkit;
pub mod etcd;
pub mod fleet;
pub mod lab;

pub use etcd::{require_etcd, EtcdError, EtcdServer};
pub use lab::{is_root, require_root, Lab, LabBuilder, LabError, UdpSink};
