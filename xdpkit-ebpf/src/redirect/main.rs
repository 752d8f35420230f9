//! The `redirect` program.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::DevMap,
    programs::XdpContext,
};
use xdpkit_common::{maps::REDIRECT_SLOT, XdpAction};

use xdpkit_ebpf::stats::count;

xdpkit_ebpf::license!();

/// The egress interface, set by the loader (`xdpkit attach redirect --to IF`).
#[map(name = "XDPKIT_REDIRECT")]
static REDIRECT_TO: DevMap = DevMap::with_max_entries(1, 0);

/// Sends every frame to the interface in `XDPKIT_REDIRECT`. If the slot is
/// empty (the target interface was deleted) frames go to the local stack
/// rather than vanish.
#[xdp(frags)]
pub fn xdpkit_redirect(ctx: XdpContext) -> u32 {
    let code = match REDIRECT_TO.redirect(REDIRECT_SLOT, u64::from(xdp_action::XDP_PASS)) {
        Ok(code) | Err(code) => code,
    };
    let action = XdpAction::from_u32(code).unwrap_or(XdpAction::Aborted);
    count(&ctx, action)
}
