//! AF_XDP sockets: the XSKMAP an interface's stages redirect into.
//!
//! One XSKMAP per interface, pinned in the interface's directory and shared
//! by every stage (the `xsk` stage, the firewall's `to-userspace` action),
//! indexed by the RX queue a frame arrived on: a socket bound to queue `q`
//! sits in entry `q`. A frame whose queue has no socket is not redirected;
//! the stage goes on as if it had not matched.

/// The shared XSKMAP's name in every object that uses it.
pub const XSKS_MAP: &str = "XDPKIT_XSKS";
/// Entries of the XSKMAP: RX queues a socket may be bound to (0..this).
pub const MAX_QUEUES: u32 = 64;
