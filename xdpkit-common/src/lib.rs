//! Types shared by the kernel programs (`xdpkit-ebpf`) and userspace (`xdpkit`).
//!
//! Everything that crosses a map boundary is defined here once, `#[repr(C)]`,
//! so both sides agree on the layout without a mirrored header.
#![no_std]

pub mod action;
pub mod balancer;
pub mod bench;
pub mod chain;
pub mod cpumap;
pub mod doctor;
pub mod dump;
pub mod firewall;
pub mod maps;
pub mod route;
pub mod trafficgen;
pub mod xsk;

pub use action::XdpAction;
pub use maps::ActionCounter;
