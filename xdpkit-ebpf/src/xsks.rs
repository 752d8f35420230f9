//! The interface's AF_XDP sockets (layout: `xdpkit_common::xsk`).

use aya_ebpf::{bindings::xdp_action, macros::map, maps::XskMap, programs::XdpContext};
use xdpkit_common::xsk::MAX_QUEUES;

/// Sockets by RX queue; the loader pins one per interface and gives it to
/// every stage that uses it.
#[map(name = "XDPKIT_XSKS")]
pub static XSKS: XskMap = XskMap::with_max_entries(MAX_QUEUES, 0);

/// Redirects the frame into the socket bound to its RX queue. `false`, the
/// frame untouched, when that queue has no socket: the caller goes on.
#[inline(always)]
pub fn to_userspace(ctx: &XdpContext) -> bool {
    // SAFETY: `ctx.ctx` is the xdp_md the kernel passed; reading a field.
    let queue = unsafe { (*ctx.ctx).rx_queue_index };
    // Flags 0: an empty entry makes the helper return XDP_ABORTED (0), never
    // XDP_REDIRECT, so the two outcomes stay apart.
    XSKS.redirect(queue, 0) == Ok(xdp_action::XDP_REDIRECT)
}
