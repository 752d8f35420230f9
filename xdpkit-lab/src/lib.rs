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
//! The examples are what `cargo xtask` runs: `demo` and `demo_fleet`
//! (`cargo xtask demo [fleet]`), `bench_firewall`, `bench_compare`,
//! `bench_stages`, `bench_lb`, `bench_route` and `bench_fleet` (`cargo
//! xtask bench firewall|compare|stages|lb|route|fleet`).

pub mod benchkit;
pub mod etcd;
pub mod fleet;
pub mod lab;

pub use etcd::{require_etcd, EtcdError, EtcdServer};
pub use lab::{is_root, require_root, Lab, LabBuilder, LabError, UdpSink};
