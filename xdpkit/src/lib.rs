//! xdpkit: load, attach and observe XDP programs written in Rust.
//!
//! - [`attach`]: attach/detach with pinned bpf_links under `/sys/fs/bpf/xdpkit/<ifname>/`;
//! - [`status`]: what is attached, with per-action counters and rates, from any process;
//! - [`features`]: what the kernel and a device support;
//! - [`testrun`]: BPF_PROG_TEST_RUN on crafted frames, with [`model`] as the reference;
//! - [`trafficgen`]: a live-frames traffic generator (BPF_PROG_TEST_RUN, XDP_TX);
//! - [`xsk`]: AF_XDP sockets fed by the `xsk` stage (frames to userspace, and back).
//!
//! Namespace labs, the benchmark harness and the demo are in the
//! `xdpkit-lab` crate (test support, not part of this library).

pub mod apply;
pub mod attach;
pub mod bench;
pub mod chain;
pub mod config;
pub mod doctor;
pub mod dump;
pub mod error;
pub mod exporter;
pub mod features;
pub mod fleet;
pub mod forwarding;
pub mod programs;
pub mod settings;
pub use programs::firewall;
pub mod iface;
pub mod maps;
pub mod mode;
pub mod model;
pub mod netlink;
pub mod object;
pub mod pins;
pub mod privilege;
pub mod rx_hash;
pub mod stats;
pub mod status;
pub mod sys;
pub mod testrun;
pub mod top;
pub mod trafficgen;
pub mod xsk;

pub use attach::{attach, detach, AttachReport, AttachRequest, DetachReport, Mode};
pub use error::{Error, Result};
pub use programs::Program;
pub use status::{status, IfaceStatus};
pub use testrun::{test_run, Harness, TestRunOutcome};
pub use xdpkit_common::{ActionCounter, XdpAction};
