//! Copies frames into the dump ring buffer after their verdict, for
//! `xdpkit dump`. With no dump running this costs one (inlined) array read.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use xdpkit_common::{
    dump::{
        DumpConfig, DumpHeader, DumpJumboRecord, DumpRecord, DUMP_MAX_SNAP, DUMP_RING_BYTES,
        DUMP_SMALL_SNAP,
    },
    XdpAction,
};

#[map(name = "XDPKIT_DUMP_CFG")]
static CFG: Array<DumpConfig> = Array::with_max_entries(1, 0);
/// Frames of a dumped verdict seen, per CPU: picks one in `sample`.
#[map(name = "XDPKIT_DUMP_SEEN")]
static SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "XDPKIT_DUMP_RING")]
static RING: RingBuf = RingBuf::with_byte_size(DUMP_RING_BYTES, 0);

/// Masks, not comparisons, bound the copy lengths for the verifier.
const SMALL_MASK: usize = 0x7ff;
const JUMBO_MASK: usize = 0x3fff;
const _: () = assert!(DUMP_SMALL_SNAP as usize <= SMALL_MASK + 1);
const _: () = assert!(DUMP_MAX_SNAP as usize <= JUMBO_MASK + 1);

/// Copies the frame if a dump wants `action`; a full ring drops the copy.
#[inline(always)]
pub fn maybe(ctx: &XdpContext, action: XdpAction, rule: u32) {
    let Some(cfg) = CFG.get(0) else {
        return;
    };
    if cfg.actions & (1 << (action as u32)) == 0 {
        return;
    }
    if cfg.sample > 1 {
        let Some(seen) = SEEN.get_ptr_mut(0) else {
            return;
        };
        // SAFETY: this CPU's slot of the map's one entry.
        let n = unsafe {
            *seen += 1;
            *seen
        };
        if n % u64::from(cfg.sample) != 0 {
            return;
        }
    }
    // The whole frame, fragments included (a jumbo frame's linear part
    // holds only its first page); `bpf_xdp_load_bytes` copies across them.
    let len = crate::frame::frame_len(ctx) as usize;
    let cap = len.min(cfg.snaplen as usize).min(DUMP_MAX_SNAP as usize);
    let head = DumpHeader {
        ts_ns: 0,
        len: len as u32,
        cap: cap as u32,
        action: action as u32,
        rule,
    };
    if cap <= DUMP_SMALL_SNAP as usize {
        copy::<DumpRecord, { DUMP_SMALL_SNAP as usize }>(ctx, head, cap & SMALL_MASK);
    } else {
        copy::<DumpJumboRecord, { DUMP_MAX_SNAP as usize }>(ctx, head, cap & JUMBO_MASK);
    }
}

/// Reserves an `R` (a header, then `N` bytes) in the ring and copies the
/// frame's first `cap` bytes into it.
#[inline(always)]
fn copy<R: 'static, const N: usize>(ctx: &XdpContext, mut head: DumpHeader, cap: usize) {
    // The verifier needs the bound on this very register.
    if cap > N {
        return;
    }
    let Some(mut entry) = RING.reserve::<R>(0) else {
        return;
    };
    let record = entry.as_mut_ptr().cast::<u8>();
    // SAFETY: `record` points to reserved ring memory of a whole `R`: a
    // DumpHeader, then `N` bytes; `cap` is at most `N` and the frame's length.
    let copied = unsafe {
        head.ts_ns = bpf_ktime_get_ns();
        record.cast::<DumpHeader>().write_unaligned(head);
        let data = record.add(core::mem::size_of::<DumpHeader>());
        cap == 0 || bpf_xdp_load_bytes(ctx.ctx, 0, data.cast(), cap as u32) == 0
    };
    if copied {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
}
