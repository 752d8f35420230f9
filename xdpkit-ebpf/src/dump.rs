//! Copies frames into the dump ring buffer after their verdict, for
//! `xdpkit dump`. With no dump running this costs one (inlined) array read.

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, generated::bpf_xdp_load_bytes},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
    programs::XdpContext,
};
use xdpkit_common::{
    dump::{DumpConfig, DumpHeader, DumpRecord, DUMP_MAX_SNAP, DUMP_RING_BYTES},
    XdpAction,
};

#[map(name = "XDPKIT_DUMP_CFG")]
static CFG: Array<DumpConfig> = Array::with_max_entries(1, 0);
/// Frames of a dumped verdict seen, per CPU: picks one in `sample`.
#[map(name = "XDPKIT_DUMP_SEEN")]
static SEEN: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "XDPKIT_DUMP_RING")]
static RING: RingBuf = RingBuf::with_byte_size(DUMP_RING_BYTES, 0);

/// A mask, not a comparison, bounds the copy length for the verifier.
const SNAP_MASK: usize = 0x7ff;
const _: () = assert!(DUMP_MAX_SNAP as usize <= SNAP_MASK + 1);

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
    let len = ctx.data_end() - ctx.data();
    let cap = len.min(cfg.snaplen as usize).min(DUMP_MAX_SNAP as usize) & SNAP_MASK;
    let Some(mut entry) = RING.reserve::<DumpRecord>(0) else {
        return;
    };
    let record = entry.as_mut_ptr();
    // SAFETY: `record` points to reserved ring memory of a whole DumpRecord;
    // `cap` is at most DUMP_MAX_SNAP, the size of `data`, and the frame's length.
    let copied = unsafe {
        (*record).head = DumpHeader {
            ts_ns: bpf_ktime_get_ns(),
            len: len as u32,
            cap: cap as u32,
            action: action as u32,
            rule,
        };
        cap == 0
            || bpf_xdp_load_bytes(ctx.ctx, 0, (*record).data.as_mut_ptr().cast(), cap as u32) == 0
    };
    if copied {
        entry.submit(0);
    } else {
        entry.discard(0);
    }
}
