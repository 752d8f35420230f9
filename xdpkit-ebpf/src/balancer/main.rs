//! The `balancer` program: an L4 load balancer (see docs/balancer.md and
//! `xdpkit_common::balancer`). A TCP or UDP frame to a VIP goes to a real
//! chosen by the flow table or the VIP's Maglev ring, encapsulated toward
//! it (IPIP, IPv4 in IPv6, ip6ip6, or GUE) and sent back out of the
//! interface (`XDP_TX`) or out of a second one (`XDP_REDIRECT`); one that
//! would exceed the path's MTU once encapsulated is answered with ICMP
//! "too big"; every other frame goes on down the chain.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    macros::{map, xdp},
    maps::{Array, DevMap, HashMap, LruHashMap, PerCpuArray},
    programs::XdpContext,
};
use core::{hint::cold_path, mem::MaybeUninit};
use xdpkit_common::{
    balancer::{
        encap_overhead, flow_hash, quic_server_id, FlowKey, FlowKey4, FlowReal, GuardWindow,
        LbConfig, LbOutcome, MemberKey, Real, Vip, VipCounters, VipKey, VipRecord, ENCAP_GUE,
        LB_MAX_FLOWS, LB_MAX_MEMBERS, LB_MAX_QUIC_IDS, LB_MAX_REALS, LB_MAX_VIPS, LB_NO_REAL,
        LB_RING_SLOTS, PROTO_TCP, PROTO_UDP, VIP_NO_FLOWS, VIP_QUIC,
    },
    chain::{RxHashMeta, RX_HASH_MAGIC},
    ActionCounter, XdpAction,
};
use xdpkit_ebpf::{
    chain,
    stats::{add, count, count_len, frame_len},
    unaligned::{load, store},
};

xdpkit_ebpf::license!();

#[map(name = "LB_VIPS")]
static VIPS: HashMap<VipKey, Vip> = HashMap::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_RINGS")]
static RINGS: Array<u32> = Array::with_max_entries(LB_RING_SLOTS, 0);
#[map(name = "LB_REALS")]
static REALS: Array<Real> = Array::with_max_entries(LB_MAX_REALS, 0);
/// Common LRUs (flags 0): their inserts cost less than with per-CPU LRU
/// lists (`BPF_F_NO_COMMON_LRU`), measured with `cargo xtask bench lb`.
#[map(name = "LB_FLOWS")]
static FLOWS: LruHashMap<FlowKey, FlowReal> = LruHashMap::with_max_entries(LB_MAX_FLOWS, 0);
#[map(name = "LB_FLOWS4")]
static FLOWS4: LruHashMap<FlowKey4, FlowReal> = LruHashMap::with_max_entries(LB_MAX_FLOWS, 0);
#[map(name = "LB_VIP_STATS")]
static VIP_STATS: PerCpuArray<VipCounters> = PerCpuArray::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_REAL_STATS")]
static REAL_STATS: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(LB_MAX_REALS, 0);
#[map(name = "LB_OUTCOMES")]
static OUTCOMES: PerCpuArray<ActionCounter> = PerCpuArray::with_max_entries(LbOutcome::COUNT, 0);
#[map(name = "LB_CONFIG")]
static CONFIG: Array<LbConfig> = Array::with_max_entries(1, 0);
/// The declared VIPs and their reals (userspace only).
#[map(name = "LB_VIP_RECORDS")]
static VIP_RECORDS: Array<VipRecord> = Array::with_max_entries(LB_MAX_VIPS, 0);
#[map(name = "LB_MEMBERS")]
static MEMBERS: HashMap<MemberKey, u32> = HashMap::with_max_entries(LB_MAX_MEMBERS, 0);
#[map(name = "LB_EGRESS")]
static EGRESS: DevMap = DevMap::with_max_entries(1, 0);
#[map(name = "LB_GUARD")]
static GUARD: PerCpuArray<GuardWindow> = PerCpuArray::with_max_entries(1, 0);
#[map(name = "LB_QUIC_IDS")]
static QUIC_IDS: Array<u32> = Array::with_max_entries(LB_MAX_QUIC_IDS, 0);

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const IPPROTO_IPIP: u8 = 4;
const IPPROTO_IPV6: u8 = 41;
const IPPROTO_UDP: u8 = 17;
const UDP_HLEN: usize = 8;
const OUTER_TTL: u8 = 64;
const NS_PER_SEC: u64 = 1_000_000_000;

/// What the balancer reads of a frame besides its flow key.
struct Frame {
    /// A TCP SYN without ACK: a new connection, which always consults the ring.
    syn: bool,
    /// The IP packet's length by its header (IPv4 total length, IPv6
    /// payload length + 40): the outer header's length field counts it.
    ip_len: u16,
    /// IPv4 TOS or IPv6 traffic class, copied to the outer header.
    tos: u8,
    /// IPv4 "don't fragment" (always true of IPv6).
    df: bool,
    /// IPv6 (the key's `v6`).
    v6: bool,
    /// The IP protocol (the key's `proto`).
    proto: u8,
    /// Offset of the TCP or UDP header.
    l4: usize,
}

/// A map key on the stack, aligned so that it is written a word at a time
/// (the keys' own alignment is 2, which would split every word).
#[repr(C, align(8))]
struct Aligned<T>(T);

#[xdp(frags)]
pub fn xdpkit_balancer(ctx: XdpContext) -> u32 {
    let len = frame_len(&ctx);
    let mut key = MaybeUninit::<Aligned<FlowKey>>::uninit();
    let mut vip_key = MaybeUninit::<Aligned<VipKey>>::uninit();
    let Some(frame) = parse(&ctx, key.as_mut_ptr(), vip_key.as_mut_ptr()) else {
        add(&OUTCOMES, LbOutcome::NotVip as u32, len);
        return chain::next_len(&ctx, len);
    };
    // SAFETY: `parse` wrote the flow's key (16 bytes of a FlowKey4 for
    // IPv4, a whole FlowKey for IPv6) and every byte of the VIP's.
    let (key, vip_key) = unsafe {
        let flow = if frame.v6 {
            Flow::V6(&key.assume_init_ref().0)
        } else {
            Flow::V4(&*key.as_ptr().cast::<FlowKey4>())
        };
        (flow, &vip_key.assume_init_ref().0)
    };
    // SAFETY: values are replaced whole by userspace, never edited in place.
    let Some(vip) = (unsafe { VIPS.get(vip_key) }).copied() else {
        add(&OUTCOMES, LbOutcome::NotVip as u32, len);
        return chain::next_len(&ctx, len);
    };
    // This CPU's counters of the VIP, kept for a new flow's below.
    let counters = VIP_STATS.get_ptr_mut(vip.id);
    if let Some(c) = counters {
        // SAFETY: this CPU's slot of an entry that exists for the life of
        // the map; nothing else writes it while the program runs here.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len;
        }
    }
    // By reference: a copy would take stack the calls below need.
    let Some(cfg) = CONFIG.get(0) else {
        return rare(&ctx, LbOutcome::EncapFailed, XdpAction::Drop, len);
    };
    let use_flows = vip.flags & VIP_NO_FLOWS == 0;
    let quic = if vip.flags & VIP_QUIC != 0 && frame.proto == PROTO_UDP {
        cold_path();
        quic_real(&ctx, &frame)
    } else {
        None
    };
    // A flow whose real has since been removed chooses again. A SYN looks
    // its flow up too and ignores the entry: the lookup brings the bucket
    // into the cache before the insert takes its lock, which measured
    // cheaper than the insert alone (`cargo xtask bench lb`: SYN 0.95x ->
    // 0.87-0.89x Katran).
    let known = if quic.is_some() || !use_flows {
        None
    } else {
        match key.get() {
            _ if frame.syn => None,
            Some(f) if f.vip == vip.id => real_at(f.real).map(|r| (f.real, r, f.hash)),
            _ => None,
        }
    };
    // An established flow's hash is in its entry: not computed again.
    let (index, real, outcome, hash) = match (quic, known) {
        (Some((index, real)), _) => (index, real, LbOutcome::QuicRouted, key.hash()),
        (None, Some((index, real, hash))) => (index, real, LbOutcome::FlowHit, hash),
        (None, None) => {
            let rx = if cfg.tuple_hash_only == 0 {
                rx_hash(&ctx)
            } else {
                None
            };
            let hash = rx.unwrap_or_else(|| key.hash());
            if vip.ring_size == 0 {
                return rare(&ctx, LbOutcome::NoReal, XdpAction::Drop, len);
            }
            let slot = vip.ring_base.wrapping_add(hash % vip.ring_size);
            let index = match RINGS.get(slot) {
                Some(i) if *i != LB_NO_REAL => *i,
                _ => return rare(&ctx, LbOutcome::NoReal, XdpAction::Drop, len),
            };
            let Some(real) = real_at(index) else {
                return rare(&ctx, LbOutcome::NoReal, XdpAction::Drop, len);
            };
            if let Some(c) = counters {
                // SAFETY: as above.
                unsafe {
                    (*c).new_flows += 1;
                    (*c).new_by_rx_hash += u64::from(rx.is_some());
                }
            }
            let mut outcome = LbOutcome::FlowMiss;
            if use_flows {
                if guard_allows(cfg.new_per_cpu) {
                    let entry = FlowReal {
                        real: index,
                        vip: vip.id,
                        hash,
                    };
                    key.insert(&entry);
                } else {
                    outcome = LbOutcome::Guarded;
                }
            }
            (index, real, outcome, hash)
        }
    };
    let overhead = encap_overhead(cfg.encap, real.v6 != 0);
    if cfg.mtu != 0 && u32::from(frame.ip_len) + u32::from(overhead) > u32::from(cfg.mtu) {
        cold_path();
        // Without DF an IPv4 packet would be fragmented, which XDP cannot.
        let sent = frame.df && too_big(&ctx, &frame, cfg.mtu.saturating_sub(overhead), len);
        let action = if sent { XdpAction::Tx } else { XdpAction::Drop };
        return rare(&ctx, LbOutcome::TooBig, action, len);
    }
    if !encapsulate(&ctx, &frame, real, cfg, hash) {
        return rare(&ctx, LbOutcome::EncapFailed, XdpAction::Drop, len);
    }
    add(&REAL_STATS, index, len);
    let action = if cfg.egress == 0 {
        XdpAction::Tx
    } else {
        match EGRESS.redirect(0, 0) {
            Ok(_) => XdpAction::Redirect,
            Err(_) => return rare(&ctx, LbOutcome::EncapFailed, XdpAction::Drop, len),
        }
    };
    // The common outcomes go in the VIP's counters, already at hand.
    match (counters, outcome) {
        (Some(c), LbOutcome::FlowHit) => {
            // SAFETY: as above.
            unsafe {
                (*c).flow_hits += 1;
                (*c).flow_hit_bytes += len;
            }
        }
        (Some(c), LbOutcome::FlowMiss) => {
            // SAFETY: as above.
            unsafe {
                (*c).flow_misses += 1;
                (*c).flow_miss_bytes += len;
            }
        }
        _ => add(&OUTCOMES, outcome as u32, len),
    }
    // Counted as it leaves, with its outer header.
    count_len(&ctx, action, len + u64::from(overhead))
}

/// A frame's flow, by the key of its family's flow table.
enum Flow<'a> {
    V4(&'a FlowKey4),
    V6(&'a FlowKey),
}

impl Flow<'_> {
    /// The flow's entry in its flow table.
    #[inline(always)]
    fn get(&self) -> Option<&FlowReal> {
        // SAFETY: entries are replaced whole, never edited in place.
        unsafe {
            match self {
                Flow::V4(k) => FLOWS4.get(*k),
                Flow::V6(k) => FLOWS.get(*k),
            }
        }
    }

    /// Remembers the flow's real; a full table evicts its least recently
    /// used entry.
    #[inline(always)]
    fn insert(&self, entry: &FlowReal) {
        let _ = match self {
            Flow::V4(k) => FLOWS4.insert(*k, entry, 0),
            Flow::V6(k) => FLOWS.insert(*k, entry, 0),
        };
    }

    /// The flow hash (the model's, of the flow as a [`FlowKey`]: an IPv4
    /// address is its first 4 bytes, the rest zero).
    #[inline(always)]
    fn hash(&self) -> u32 {
        match self {
            Flow::V4(k) => {
                let ports = (u32::from(k.sport) << 16) | u32::from(k.dport);
                let half = |a: [u8; 4]| (u64::from(u32::from_be_bytes(a)) << 32, 0);
                flow_hash(half(k.src), half(k.dst), ports, k.proto)
            }
            Flow::V6(k) => {
                let ports = (u32::from(k.sport) << 16) | u32::from(k.dport);
                flow_hash(halves(&k.src), halves(&k.dst), ports, k.proto)
            }
        }
    }
}

/// The driver's RX hash of the frame's flow, where the RX-hash root left
/// one in the metadata area.
#[inline(always)]
fn rx_hash(ctx: &XdpContext) -> Option<u32> {
    let meta = ctx.metadata();
    if meta + core::mem::size_of::<RxHashMeta>() > ctx.data() {
        return None;
    }
    // SAFETY: the metadata area holds at least an RxHashMeta (checked).
    let value = unsafe { core::ptr::read_unaligned(meta as *const RxHashMeta) };
    (value.magic == RX_HASH_MAGIC).then_some(value.hash)
}

/// The real a QUIC packet's connection id names, if any and in use.
#[inline(always)]
fn quic_real(ctx: &XdpContext, frame: &Frame) -> Option<(u32, &'static Real)> {
    let payload = at::<10>(ctx, frame.l4 + UDP_HLEN)?;
    let id = quic_server_id(payload)?;
    let slot = *QUIC_IDS.get(u32::from(id))?;
    let index = slot.checked_sub(1)?;
    real_at(index).map(|r| (index, r))
}

/// Whether this CPU may add one more flow-table entry this second.
#[inline(always)]
fn guard_allows(limit: u32) -> bool {
    if limit == 0 {
        return true;
    }
    let Some(w) = GUARD.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: this CPU's own entry; a program runs on one CPU at a time.
    let w = unsafe { &mut *w };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    if now.wrapping_sub(w.start_ns) >= NS_PER_SEC {
        w.start_ns = now;
        w.added = 0;
    }
    if w.added >= u64::from(limit) {
        return false;
    }
    w.added += 1;
    true
}

/// The real at `index`, if the slot holds one. In place: its address is
/// read a word at a time straight into the outer header.
#[inline(always)]
fn real_at(index: u32) -> Option<&'static Real> {
    REALS.get(index).filter(|r| r.used != 0)
}

/// [`verdict`] on a path frames rarely take (a drop, ICMP too big): laid
/// out after the common path, which then runs straight through.
#[inline(always)]
fn rare(ctx: &XdpContext, outcome: LbOutcome, action: XdpAction, len: u64) -> u32 {
    cold_path();
    verdict(ctx, outcome, action, len)
}

/// Counts `outcome` and the verdict.
#[inline(always)]
fn verdict(ctx: &XdpContext, outcome: LbOutcome, action: XdpAction, len: u64) -> u32 {
    add(&OUTCOMES, outcome as u32, len);
    count(ctx, action)
}

/// An address as two big-endian halves.
#[inline(always)]
fn halves(a: &[u8; 16]) -> (u64, u64) {
    let mut hi = [0u8; 8];
    let mut lo = [0u8; 8];
    hi.copy_from_slice(&a[..8]);
    lo.copy_from_slice(&a[8..]);
    (u64::from_be_bytes(hi), u64::from_be_bytes(lo))
}

/// The frame's flow, if it is TCP or UDP over IPv4 (no options, not a
/// fragment) or IPv6 (no extension header) after an untagged Ethernet
/// header, written into `key` (a [`FlowKey4`] in its first 16 bytes for
/// IPv4, a whole [`FlowKey`] for IPv6) and its VIP's key into `vip` (every
/// byte). Anything else is not balanced. Words, not bytes: one load per
/// header word and one store per key word.
#[inline(always)]
fn parse(ctx: &XdpContext, key: *mut Aligned<FlowKey>, vip: *mut Aligned<VipKey>) -> Option<Frame> {
    let d = ctx.data();
    let end = ctx.data_end();
    if d + ETH_HLEN > end {
        return None;
    }
    let k = key.cast::<u64>();
    let v = vip.cast::<u64>();
    // SAFETY: each load lies inside the frame, by the bound checked before
    // it; each store inside the keys (40 and 20 bytes, 8-aligned).
    unsafe {
        let ethertype = load::<2>((d + 12) as *const u8) as u16;
        if ethertype == u16::from_ne_bytes([0x08, 0x00]) {
            if d + ETH_HLEN + IPV4_HLEN > end {
                return None;
            }
            let ip = (d + ETH_HLEN) as *const u8;
            // Version/length, TOS, total length | id, flags, offset | TTL, protocol.
            let w0 = load::<4>(ip);
            let w1 = load::<4>(ip.add(4));
            let proto = (load::<2>(ip.add(8)) >> 8) as u8;
            // Options, or a fragment (more fragments, or an offset).
            if w0 as u8 != 0x45 || w1 & u64::from(u32::from_ne_bytes([0, 0, 0x3f, 0xff])) != 0 {
                return None;
            }
            let (ports, syn) = l4_ports::<{ ETH_HLEN + IPV4_HLEN }>(d, end, proto)?;
            // Source and destination as they lie, then the ports (as they
            // lie), protocol and pad: a FlowKey4.
            let addrs = load::<8>(ip.add(12));
            k.write(addrs);
            k.add(1).write(ports | u64::from(proto) << 32);
            v.write(addrs >> 32);
            v.add(1).write(0);
            v.add(2)
                .cast::<u32>()
                .write((ports >> 16) as u32 | u32::from(proto) << 16);
            return Some(Frame {
                syn,
                ip_len: u16::from_be(((w0 >> 16) & 0xffff) as u16),
                tos: (w0 >> 8) as u8,
                df: w1 & u64::from(u32::from_ne_bytes([0, 0, 0x40, 0])) != 0,
                v6: false,
                proto,
                l4: ETH_HLEN + IPV4_HLEN,
            });
        }
        if ethertype != u16::from_ne_bytes([0x86, 0xdd]) || d + ETH_HLEN + IPV6_HLEN > end {
            return None;
        }
        let ip = (d + ETH_HLEN) as *const u8;
        // Version, class, label | payload length, next header, hops.
        let w0 = load::<2>(ip);
        let w1 = load::<4>(ip.add(4));
        let proto = (w1 >> 16) as u8;
        let ip_len = u16::from_be((w1 & 0xffff) as u16).checked_add(IPV6_HLEN as u16)?;
        let (ports, syn) = l4_ports::<{ ETH_HLEN + IPV6_HLEN }>(d, end, proto)?;
        let (d0, d1) = (load::<8>(ip.add(24)), load::<8>(ip.add(32)));
        k.write(load::<8>(ip.add(8)));
        k.add(1).write(load::<8>(ip.add(16)));
        k.add(2).write(d0);
        k.add(3).write(d1);
        // Source port, destination port (both as in the frame), protocol, v6, pad.
        k.add(4).write(ports | u64::from(proto) << 32 | 1 << 40);
        v.write(d0);
        v.add(1).write(d1);
        v.add(2)
            .cast::<u32>()
            .write((ports >> 16) as u32 | u32::from(proto) << 16 | 1 << 24);
        Some(Frame {
            syn,
            ip_len,
            tos: ((w0 as u8) << 4) | ((w0 >> 8) as u8 >> 4),
            df: true,
            v6: true,
            proto,
            l4: ETH_HLEN + IPV6_HLEN,
        })
    }
}

/// The TCP or UDP header at `L4`: its ports as one native word (as they lie
/// in the frame), and whether it is a TCP SYN without ACK.
#[inline(always)]
fn l4_ports<const L4: usize>(d: usize, end: usize, proto: u8) -> Option<(u64, bool)> {
    let l4 = (d + L4) as *const u8;
    match proto {
        PROTO_TCP => {
            if d + L4 + 20 > end {
                return None;
            }
            // SAFETY: the 20 bytes of a TCP header lie in the frame.
            let (ports, flags) = unsafe { (load::<4>(l4), load::<2>(l4.add(12)) >> 8) };
            // SYN set, ACK clear.
            Some((ports, flags & 0x12 == 0x02))
        }
        PROTO_UDP => {
            if d + L4 + UDP_HLEN > end {
                return None;
            }
            // SAFETY: the 8 bytes of a UDP header lie in the frame.
            Some((unsafe { load::<4>(l4) }, false))
        }
        _ => None,
    }
}

/// Puts an outer header toward `real` (IP, or IP + UDP for GUE) in front
/// of the frame's IP packet and a new Ethernet header in front of that: to
/// the gateway (or back to the frame's sender), from the interface's own
/// address. False if the frame cannot grow or the lengths overflow.
#[inline(always)]
fn encapsulate(ctx: &XdpContext, f: &Frame, real: &Real, cfg: &LbConfig, hash: u32) -> bool {
    const V4: usize = ETH_HLEN + IPV4_HLEN;
    const V6: usize = ETH_HLEN + IPV6_HLEN;
    match (real.v6 != 0, cfg.encap == ENCAP_GUE) {
        (false, false) => push::<V4>(ctx, f, real, cfg, hash),
        (false, true) => {
            cold_path();
            push::<{ V4 + UDP_HLEN }>(ctx, f, real, cfg, hash)
        }
        (true, false) => {
            cold_path();
            push::<V6>(ctx, f, real, cfg, hash)
        }
        (true, true) => {
            cold_path();
            push::<{ V6 + UDP_HLEN }>(ctx, f, real, cfg, hash)
        }
    }
}

/// The low 48 bits: a MAC address loaded as a word.
const MAC_MASK: u64 = (1 << 48) - 1;

/// [`encapsulate`] with `N` bytes of new headers: Ethernet, IPv4 or IPv6
/// by `N`, and UDP when `N` has room for it. Written a word at a time, in
/// native order (the Internet checksum does not depend on byte order).
#[inline(always)]
fn push<const N: usize>(
    ctx: &XdpContext,
    f: &Frame,
    real: &Real,
    cfg: &LbConfig,
    hash: u32,
) -> bool {
    let v6 = N >= ETH_HLEN + IPV6_HLEN;
    let ip_hlen = if v6 { IPV6_HLEN } else { IPV4_HLEN };
    let udp = N == ETH_HLEN + ip_hlen + UDP_HLEN;
    let Some(l4_len) = f.ip_len.checked_add(if udp { UDP_HLEN as u16 } else { 0 }) else {
        return false;
    };
    // IPv4's total length counts its header; IPv6's payload length does not.
    let Some(ip_len) = l4_len.checked_add(if v6 { 0 } else { IPV4_HLEN as u16 }) else {
        return false;
    };
    let proto = if udp {
        IPPROTO_UDP
    } else if f.v6 {
        IPPROTO_IPV6
    } else {
        IPPROTO_IPIP
    };
    let cfg_p = (cfg as *const LbConfig).cast::<u8>();
    // SAFETY: the settings' map value: `gateway` at 0 (6 bytes and 2 of pad).
    let gateway = unsafe { load::<8>(cfg_p) } & MAC_MASK;
    // SAFETY: a helper on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -((N - ETH_HLEN) as i32)) } != 0 {
        return false;
    }
    // Written in place: a header on the stack would not fit beside the
    // caller's frame (512 bytes for the call chain).
    let start = ctx.data();
    if start + N > ctx.data_end() {
        return false;
    }
    let h = start as *mut u8;
    // SAFETY: `N` bytes at `h` lie in the frame (checked above), the
    // frame's own Ethernet header in the last 14 of them; nothing else
    // refers to them while the program writes. `real` and `cfg` are map
    // values.
    unsafe {
        // The frame's MACs, before the new headers cover them.
        let old = h.add(N - ETH_HLEN);
        let old_dst = load::<4>(old) | load::<2>(old.add(4)) << 32;
        let old_src = load::<2>(old.add(6)) | load::<4>(old.add(8)) << 16;
        let dmac = if gateway == 0 { old_src } else { gateway };
        let smac = if cfg.egress == 0 {
            old_dst
        } else {
            let mac = cfg.egress_mac.as_ptr();
            load::<4>(mac) | load::<2>(mac.add(4)) << 32
        };
        store::<4>(h, dmac);
        store::<2>(h.add(4), dmac >> 32);
        store::<2>(h.add(6), smac);
        store::<4>(h.add(8), smac >> 16);
        let len_be = u64::from(ip_len.to_be());
        if v6 {
            store::<2>(h.add(12), u64::from(u16::from_ne_bytes([0x86, 0xdd])));
            let label = hash & 0xf_ffff;
            let tos = u32::from(f.tos);
            // Version and class, class and label: as the bytes lie.
            let first = [
                0x60 | (tos >> 4) as u8,
                (tos << 4) as u8 | ((label >> 16) as u8 & 0x0f),
                (label >> 8) as u8,
                label as u8,
            ];
            store::<4>(h.add(14), u64::from(u32::from_ne_bytes(first)));
            let w = len_be | u64::from(proto) << 16 | u64::from(OUTER_TTL) << 24;
            store::<4>(h.add(18), w);
            store::<8>(h.add(22), load::<8>(cfg.src6.as_ptr()));
            store::<4>(h.add(30), 0);
            store::<4>(h.add(34), u64::from(hash.to_be()));
            let addr = real.addr.as_ptr();
            store::<8>(h.add(38), load::<8>(addr));
            store::<8>(h.add(46), load::<8>(addr.add(8)));
        } else {
            store::<2>(h.add(12), u64::from(u16::from_ne_bytes([0x08, 0x00])));
            let bits = cfg.src4_bits.min(16);
            let host = if bits == 0 {
                0
            } else {
                hash & ((1u32 << bits) - 1)
            };
            let src = u64::from(cfg.src4 | host.to_be());
            let dst = load::<4>(real.addr.as_ptr());
            // Version and length, TOS, total length | id, flags | TTL, protocol.
            let w0 = 0x45 | u64::from(f.tos) << 8 | len_be << 16;
            let w2 = u64::from(OUTER_TTL) | u64::from(proto) << 8;
            let sum = fold(w0 + w2 + src + dst);
            store::<4>(h.add(14), w0);
            store::<4>(h.add(18), 0);
            store::<4>(h.add(22), w2 | u64::from(sum) << 16);
            store::<4>(h.add(26), src);
            store::<4>(h.add(30), dst);
        }
        if udp {
            let u = h.add(ETH_HLEN + ip_hlen);
            // The flow hash as source port: the reals' RSS spreads flows.
            let sport = 0x8000 | (hash as u16 & 0x7fff);
            // Checksum 0: none (RFC 6935 allows it for tunnels over IPv6 too).
            let w = u64::from(sport.to_be())
                | u64::from(cfg.gue_port.to_be()) << 16
                | u64::from(l4_len.to_be()) << 32;
            store::<8>(u, w);
        }
    }
    true
}

/// The Internet checksum of words summed into `acc` (one's complement of
/// the folded sum).
#[inline(always)]
fn fold(mut acc: u64) -> u16 {
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// `N` bytes of the frame at `off`, read in place (no copy on the stack),
/// if it has them.
#[inline(always)]
fn at<const N: usize>(ctx: &XdpContext, off: usize) -> Option<&[u8; N]> {
    let start = ctx.data();
    if start + off + N > ctx.data_end() {
        return None;
    }
    // SAFETY: `N` bytes at `start + off` lie in the frame (checked above).
    Some(unsafe { &*((start + off) as *const [u8; N]) })
}

/// The frame's first `N` bytes, to write in place, if it has them.
#[inline(always)]
fn head<const N: usize>(ctx: &XdpContext) -> Option<&mut [u8; N]> {
    let start = ctx.data();
    if start + N > ctx.data_end() {
        return None;
    }
    // SAFETY: `N` bytes at `start` lie in the frame (checked above), and
    // nothing else refers to them while the program writes.
    Some(unsafe { &mut *(start as *mut [u8; N]) })
}

/// The reply to a frame too big for the path once encapsulated, which
/// fits `mtu` bytes unencapsulated: ICMP fragmentation needed (IPv4) or
/// packet too big (IPv6) from the VIP to the client, carrying the frame's
/// IP header and 8 bytes of what follows, sent back where it came from.
/// False if the frame could not be reshaped.
#[inline(always)]
fn too_big(ctx: &XdpContext, f: &Frame, mtu: u16, len: u64) -> bool {
    if f.v6 {
        too_big_v6(ctx, mtu, len)
    } else {
        too_big_v4(ctx, mtu, len)
    }
}

// The reply is built around the frame's own IP header: the head grows by
// the new IP and ICMP headers, which puts the frame's IP header right where
// the ICMP message quotes it, and the tail is cut after 8 bytes of it.

#[inline(always)]
fn too_big_v4(ctx: &XdpContext, mtu: u16, len: u64) -> bool {
    const ICMP: usize = ETH_HLEN + IPV4_HLEN;
    const QUOTE: usize = IPV4_HLEN + 8;
    let grow = IPV4_HLEN + 8;
    // SAFETY: a helper on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0
        || !resize(ctx, len + grow as u64, ICMP + 8 + QUOTE)
    {
        return false;
    }
    let Some(h) = head::<{ ICMP + 8 + QUOTE }>(ctx) else {
        return false;
    };
    // The frame's MACs, before the new IP header covers them.
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&h[grow..grow + 12]);
    h[..6].copy_from_slice(&macs[6..]);
    h[6..12].copy_from_slice(&macs[..6]);
    h[12] = 0x08;
    h[13] = 0;
    h[14] = 0x45;
    h[15] = 0;
    h[16..18].copy_from_slice(&((IPV4_HLEN + 8 + QUOTE) as u16).to_be_bytes());
    h[18..22].fill(0);
    h[22] = OUTER_TTL;
    h[23] = 1;
    h[24..26].fill(0);
    let q = ICMP + 8;
    let (src, dst) = (h[q + 12..q + 16].as_ptr(), h[q + 16..q + 20].as_ptr());
    // SAFETY: 4 bytes each, inside the frame, not overlapping 26..34.
    unsafe {
        core::ptr::copy_nonoverlapping(dst, h[26..30].as_mut_ptr(), 4);
        core::ptr::copy_nonoverlapping(src, h[30..34].as_mut_ptr(), 4);
    }
    h[ICMP] = 3;
    h[ICMP + 1] = 4;
    h[ICMP + 2..ICMP + 6].fill(0);
    h[ICMP + 6..ICMP + 8].copy_from_slice(&mtu.to_be_bytes());
    let sum = checksum(&h[ICMP..], 0);
    h[ICMP + 2..ICMP + 4].copy_from_slice(&sum.to_be_bytes());
    let sum = checksum(&h[ETH_HLEN..ICMP], 0);
    h[24..26].copy_from_slice(&sum.to_be_bytes());
    true
}

#[inline(always)]
fn too_big_v6(ctx: &XdpContext, mtu: u16, len: u64) -> bool {
    const ICMP: usize = ETH_HLEN + IPV6_HLEN;
    const QUOTE: usize = IPV6_HLEN + 8;
    const ICMP_LEN: u16 = (8 + QUOTE) as u16;
    let grow = IPV6_HLEN + 8;
    // SAFETY: a helper on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0
        || !resize(ctx, len + grow as u64, ICMP + 8 + QUOTE)
    {
        return false;
    }
    let Some(h) = head::<{ ICMP + 8 + QUOTE }>(ctx) else {
        return false;
    };
    let mut macs = [0u8; 12];
    macs.copy_from_slice(&h[grow..grow + 12]);
    h[..6].copy_from_slice(&macs[6..]);
    h[6..12].copy_from_slice(&macs[..6]);
    h[12] = 0x86;
    h[13] = 0xdd;
    h[14..18].copy_from_slice(&[0x60, 0, 0, 0]);
    h[18..20].copy_from_slice(&ICMP_LEN.to_be_bytes());
    h[20] = 58;
    h[21] = OUTER_TTL;
    let q = ICMP + 8;
    let (src, dst) = (h[q + 8..q + 24].as_ptr(), h[q + 24..q + 40].as_ptr());
    // SAFETY: 16 bytes each, inside the frame, not overlapping 22..54.
    unsafe {
        core::ptr::copy_nonoverlapping(dst, h[22..38].as_mut_ptr(), 16);
        core::ptr::copy_nonoverlapping(src, h[38..54].as_mut_ptr(), 16);
    }
    h[ICMP] = 2;
    h[ICMP + 1..ICMP + 4].fill(0);
    h[ICMP + 4..ICMP + 8].copy_from_slice(&u32::from(mtu).to_be_bytes());
    // The pseudo-header: addresses, upper-layer length, next header.
    let sum = checksum(&h[22..54], u32::from(ICMP_LEN) + 58);
    let sum = checksum(&h[ICMP..], u32::from(!sum));
    h[ICMP + 2..ICMP + 4].copy_from_slice(&sum.to_be_bytes());
    true
}

/// Makes a frame of `have` bytes in all exactly `len` bytes long (it is
/// longer). By the whole length, not the linear part: the tail helper
/// shrinks a multi-buffer frame's fragments first, then its linear part.
/// Afterwards the first `len` bytes must be linear (checked by `head`).
#[inline(always)]
fn resize(ctx: &XdpContext, have: u64, len: usize) -> bool {
    let len = len as u64;
    if have < len {
        return false;
    }
    // SAFETY: a helper on this program's context.
    unsafe { bpf_xdp_adjust_tail(ctx.ctx, -((have - len) as i32)) == 0 }
}

/// The Internet checksum of `bytes` (a multiple of 4 bytes long) added
/// to `sum`. Words of 4 bytes: half the loads of 2-byte words, and no
/// unrolled run of loads spilling to the stack.
#[inline(always)]
fn checksum(bytes: &[u8], sum: u32) -> u16 {
    let mut acc = u64::from(sum);
    for w in bytes.chunks_exact(4) {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    acc = (acc & 0xffff_ffff) + (acc >> 32);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}
