//! Bounds-checked access to frame bytes.

use aya_ebpf::{helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};

/// Length of an Ethernet header (two MACs and the EtherType).
pub const ETH_HLEN: usize = 14;
const MAC_LEN: usize = 6;

/// Swaps the destination and source MAC addresses in place.
/// Returns `false`, touching nothing, if the frame is shorter than an
/// Ethernet header.
#[inline(always)]
pub fn swap_macs(ctx: &XdpContext) -> bool {
    let start = ctx.data();
    if start + ETH_HLEN > ctx.data_end() {
        return false;
    }
    let base = start as *mut u8;
    // A fixed 6-step loop: the compiler unrolls it, the verifier sees no loop.
    for i in 0..MAC_LEN {
        // SAFETY: i < 6 and i + 6 < 14 <= frame length, checked above.
        unsafe {
            let dst = base.add(i);
            let src = base.add(i + MAC_LEN);
            let tmp = *dst;
            *dst = *src;
            *src = tmp;
        }
    }
    true
}

/// The whole frame's length: with multi-buffer (`xdp.frags`) frames larger
/// than a page keep only their first part between `data` and `data_end`,
/// the rest in fragments, which counters must count too.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    // SAFETY: a helper on this program's context.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) }
}
