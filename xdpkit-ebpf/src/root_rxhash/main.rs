//! The RX-hash root: the root (see `root`), loaded bound to its device so
//! that it may ask the driver for the frame's RX hash, which it leaves in
//! the metadata area for the stages (`xdpkit_common::chain::RxHashMeta`).
//! Its one kfunc call is relocated by xdpkit's loader (aya 0.14 does not),
//! so it lives in an object of its own.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_md, helpers::bpf_xdp_adjust_meta, macros::xdp, programs::XdpContext};
use xdpkit_common::chain::{RxHashMeta, RX_HASH_MAGIC};

xdpkit_ebpf::license!();

unsafe extern "C" {
    /// The kernel's `bpf_xdp_metadata_rx_hash(ctx, *hash, *rss_type)`:
    /// 0 and the hash, or a negative errno when the driver has none for
    /// this frame (veth: a frame that came as an xdp_frame, not an skb).
    fn bpf_xdp_metadata_rx_hash(ctx: *mut xdp_md, hash: *mut u32, rss_type: *mut u32) -> i32;
}

const META_LEN: usize = core::mem::size_of::<RxHashMeta>();

#[xdp(frags)]
pub fn xdpkit_root_rxhash(ctx: XdpContext) -> u32 {
    let mut hash = 0u32;
    let mut rss_type = 0u32;
    // SAFETY: the kfunc takes the context and two writable u32s.
    let known = unsafe { bpf_xdp_metadata_rx_hash(ctx.ctx, &mut hash, &mut rss_type) } == 0;
    // SAFETY: grows the metadata area in front of the frame; checked below.
    if known && unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META_LEN as i32)) } == 0 {
        let meta = ctx.metadata();
        if meta + META_LEN <= ctx.data() {
            let value = RxHashMeta {
                hash,
                magic: RX_HASH_MAGIC,
            };
            // SAFETY: META_LEN bytes at `meta` are inside the metadata area
            // (checked against `data` just above).
            unsafe { core::ptr::write_unaligned(meta as *mut RxHashMeta, value) };
        }
    }
    xdpkit_ebpf::chain::enter(&ctx)
}
