//! The `trafficgen` program.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::bpf_get_prandom_u32,
    macros::{map, xdp},
    maps::Array,
    programs::XdpContext,
};
use xdpkit_common::{
    trafficgen::{GenConfig, GEN_HEAD, MAX_L4_CSUM},
    XdpAction,
};

use xdpkit_ebpf::frame::ETH_HLEN;

xdpkit_ebpf::license!();

#[map(name = "XDPKIT_GEN_CFG")]
static GEN_CFG: Array<GenConfig> = Array::with_max_entries(1, 0);

const ETH_P_IPV4: [u8; 2] = [0x08, 0x00];
const ETH_P_IPV6: [u8; 2] = [0x86, 0xdd];
const IPV6_HLEN: usize = 40;
const IPV6_SRC: usize = ETH_HLEN + 8;
const IPV4_MIN_HLEN: usize = 20;
const IPV4_CSUM: usize = ETH_HLEN + 10;
const IPV4_SRC: usize = ETH_HLEN + 12;
const L4_MASK: usize = 0x7f;
const _: () = assert!(MAX_L4_CSUM as usize <= L4_MASK);

/// The traffic generator: run by BPF_PROG_TEST_RUN in live-frames mode, it
/// gives each IPv4 or IPv6 frame a random source inside the configured
/// range (checksums updated incrementally, RFC 1624) and sends it out of
/// the interface named as ingress. Never attached to an interface.
#[xdp]
pub fn xdpkit_gen(ctx: XdpContext) -> u32 {
    if let Some(cfg) = GEN_CFG.get(0) {
        restore_head(&ctx, cfg);
        if cfg.src_random != 0 {
            randomise_source(&ctx, cfg);
        }
    }
    XdpAction::Tx as u32
}

/// Writes the configured first bytes of the frame back (see
/// [`GenConfig::head`]): 8-byte chunks, then the last 8 bytes again
/// (overlapping) for a length that is not a multiple of 8.
#[inline(always)]
fn restore_head(ctx: &XdpContext, cfg: &GenConfig) {
    let start = ctx.data();
    let end = ctx.data_end();
    let len = cfg.head_len as usize;
    if len < 8 {
        return;
    }
    let base = start as *mut u8;
    let mut chunk = 0;
    // At most 12 steps: the verifier sees a bounded loop.
    while chunk < GEN_HEAD / 8 {
        let off = chunk * 8;
        if off + 8 > len || start + off + 8 > end {
            break;
        }
        if let Some(bytes) = cfg.head.get(off..off + 8) {
            // SAFETY: `off .. off + 8` lies in the frame (checked above).
            unsafe { copy8(base.add(off), bytes) };
        }
        chunk += 1;
    }
    // A mask, not a comparison, bounds the offset (as for `l4_csum`); the
    // pointer written through is the one checked against the frame's end
    // (LLVM would otherwise check a copy and the verifier lose the range).
    let last = (len - 8) & L4_MASK;
    if last % 8 == 0 || last + 8 > GEN_HEAD {
        return;
    }
    let at = start + last;
    if at + 8 > end {
        return;
    }
    let mut chunk = [0u8; 8];
    chunk.copy_from_slice(&cfg.head[last..last + 8]);
    // SAFETY: `at .. at + 8` lies in the frame (checked above).
    unsafe { core::ptr::write_unaligned(at as *mut [u8; 8], chunk) };
}

/// Copies 8 bytes of `from` to `to`.
///
/// # Safety
///
/// `to .. to + 8` is inside the frame.
#[inline(always)]
unsafe fn copy8(to: *mut u8, from: &[u8]) {
    let mut chunk = [0u8; 8];
    chunk.copy_from_slice(&from[..8]);
    // SAFETY: as the caller promises.
    unsafe { core::ptr::write_unaligned(to as *mut [u8; 8], chunk) };
}

#[inline(always)]
fn randomise_source(ctx: &XdpContext, cfg: &GenConfig) {
    let start = ctx.data();
    if start + ETH_HLEN + IPV4_MIN_HLEN > ctx.data_end() {
        return;
    }
    let base = start as *mut u8;
    // SAFETY: every offset below is < ETH_HLEN + 20, checked above.
    unsafe {
        if [*base.add(12), *base.add(13)] == ETH_P_IPV6 {
            randomise_source6(ctx, cfg);
            return;
        }
        if [*base.add(12), *base.add(13)] != ETH_P_IPV4 {
            return;
        }
        let src = (cfg.src_base | (bpf_get_prandom_u32() & cfg.src_random)).to_be_bytes();
        let old = [word(base, IPV4_SRC), word(base, IPV4_SRC + 2)];
        for (i, b) in src.iter().enumerate() {
            *base.add(IPV4_SRC + i) = *b;
        }
        let new = [word(base, IPV4_SRC), word(base, IPV4_SRC + 2)];
        fix_checksum(base, IPV4_CSUM, old, new);
        // TCP's and UDP's checksums cover the source address too.
        // A mask, not a comparison: LLVM checks a comparison on a copy of
        // the register it then adds to the packet pointer, and the verifier
        // loses the bound. Userspace keeps the offset within the mask.
        let l4 = cfg.l4_csum as usize & L4_MASK;
        if l4 != 0 && start + l4 + 2 <= ctx.data_end() {
            fix_checksum(base, l4, old, new);
        }
    }
}

/// IPv6: the configured word of the source gets a random value in range;
/// no header checksum, only the L4 one over the pseudo-header.
#[inline(always)]
fn randomise_source6(ctx: &XdpContext, cfg: &GenConfig) {
    let start = ctx.data();
    if start + ETH_HLEN + IPV6_HLEN > ctx.data_end() {
        return;
    }
    let base = start as *mut u8;
    let at = IPV6_SRC + 4 * (cfg.src_word & 3) as usize;
    // LLVM turns the offset into pointer arithmetic: bound the pointer it
    // makes, not only the header, or the verifier loses the range.
    let word_at = start + at;
    if word_at + 4 > ctx.data_end() {
        return;
    }
    let p = word_at as *mut u8;
    // SAFETY: `p .. p + 4` is inside the frame, checked just above.
    unsafe {
        let src = (cfg.src_base | (bpf_get_prandom_u32() & cfg.src_random)).to_be_bytes();
        let old = [word(p, 0), word(p, 2)];
        for (i, b) in src.iter().enumerate() {
            *p.add(i) = *b;
        }
        let new = [word(p, 0), word(p, 2)];
        let l4 = cfg.l4_csum as usize & L4_MASK;
        if l4 != 0 && start + l4 + 2 <= ctx.data_end() {
            fix_checksum(base, l4, old, new);
        }
    }
}

/// RFC 1624 incremental update of the checksum at `at` for two 16-bit
/// words changed from `old` to `new`.
///
/// # Safety
///
/// `base + at + 1` is inside the frame.
#[inline(always)]
unsafe fn fix_checksum(base: *mut u8, at: usize, old: [u16; 2], new: [u16; 2]) {
    let mut sum = u32::from(!word(base, at));
    for i in 0..2 {
        sum += u32::from(!old[i]) + u32::from(new[i]);
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let csum = (!(sum as u16)).to_be_bytes();
    *base.add(at) = csum[0];
    *base.add(at + 1) = csum[1];
}

/// The big-endian 16-bit word at `off`.
///
/// # Safety
///
/// `base + off + 1` is inside the frame.
#[inline(always)]
unsafe fn word(base: *mut u8, off: usize) -> u16 {
    u16::from_be_bytes([*base.add(off), *base.add(off + 1)])
}
