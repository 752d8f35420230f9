//! Frame reading, identical in outcome to xdpkit's `firewall::frame` (the
//! reference): Ethernet, up to two VLAN tags, IPv4 with IHL/length checks,
//! IPv6 with a bounded extension-header walk, TCP/UDP/ICMP/ICMPv6.

use aya_ebpf::{bindings::xdp_md, helpers::generated::bpf_xdp_get_buff_len, programs::XdpContext};
use xdpkit_ebpf::unaligned::load;

const ETH_HLEN: usize = 14;
const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT: usize = 6;
/// No XDP frame is longer; offsets beyond it are cut short anyway, and the
/// bound lets the verifier track offsets.
const MAX_OFFSET: usize = 4096;

pub const NO_VLAN: u32 = u32::MAX;

/// Aligned so that LLVM clears and copies the addresses with 8-byte stores
/// rather than calls to a byte-wise `memset`.
///
/// [`parse`] checks the whole frame but leaves `src`, `dst` and `smac`
/// zero: only rules read them, so [`read_addresses`] copies them when the
/// firewall has rules to judge, not on every frame.
#[repr(C, align(8))]
pub struct IpFrame {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub vlan: u32,
    /// At a multiple of 4, for [`read_addresses`]'s two stores.
    pub smac: [u8; 6],
    /// Offset of the IP header (for [`read_addresses`]).
    pub l3: u16,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub v6: bool,
    pub later_fragment: bool,
    pub has_ports: bool,
}

// `src_halves` and `dst_halves` read both addresses as aligned words.
const _: () = assert!(core::mem::offset_of!(IpFrame, src) == 0);
const _: () = assert!(core::mem::offset_of!(IpFrame, dst) == 16);

/// `addr` as two big-endian words.
///
/// # Safety
/// `addr` must be 8-byte aligned.
#[inline(always)]
unsafe fn halves(addr: &[u8; 16]) -> (u64, u64) {
    let words = addr.as_ptr().cast::<u64>();
    // SAFETY: aligned (the caller's promise) and 16 bytes long.
    unsafe {
        (
            u64::from_be(words.read()),
            u64::from_be(words.add(1).read()),
        )
    }
}

/// The first 4 bytes of `addr` (an IPv4 address), in one load.
///
/// # Safety
/// `addr` must be 4-byte aligned.
#[inline(always)]
unsafe fn first4(addr: &[u8; 16]) -> [u8; 4] {
    // SAFETY: aligned (the caller's promise) and 16 bytes long.
    unsafe { addr.as_ptr().cast::<u32>().read() }.to_ne_bytes()
}

impl IpFrame {
    /// The source address as two big-endian halves: two 8-byte loads,
    /// where building them from the bytes takes sixteen loads and shifts.
    #[inline(always)]
    pub fn src_halves(&self) -> (u64, u64) {
        // SAFETY: `src` sits at offset 0 of an 8-aligned struct (checked above).
        unsafe { halves(&self.src) }
    }

    /// [`IpFrame::src_halves`] of the destination.
    #[inline(always)]
    pub fn dst_halves(&self) -> (u64, u64) {
        // SAFETY: `dst` sits at offset 16 of an 8-aligned struct (checked above).
        unsafe { halves(&self.dst) }
    }

    /// The IPv4 source address's bytes (the first 4 of `src`): one aligned
    /// 4-byte load, not four byte loads.
    #[inline(always)]
    pub fn src4(&self) -> [u8; 4] {
        // SAFETY: `src` sits at offset 0 of an 8-aligned struct (checked above).
        unsafe { first4(&self.src) }
    }

    /// [`IpFrame::src4`] of the destination.
    #[inline(always)]
    pub fn dst4(&self) -> [u8; 4] {
        // SAFETY: `dst` sits at offset 16 of an 8-aligned struct (checked above).
        unsafe { first4(&self.dst) }
    }

    /// Zeroes `slot` in place with 8-byte volatile stores: a zero literal,
    /// or a zeroed value moved into place, becomes a call to a byte-wise
    /// `memset` on BPF.
    #[inline(always)]
    pub fn zero_in(slot: &mut core::mem::MaybeUninit<IpFrame>) -> &mut IpFrame {
        let words = slot.as_mut_ptr().cast::<u64>();
        for i in 0..core::mem::size_of::<IpFrame>() / 8 {
            // SAFETY: IpFrame is 8-aligned and a multiple of 8 bytes long.
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
        }
        // SAFETY: every field (bytes, integers, bools) is valid as zero.
        unsafe { slot.assume_init_mut() }
    }
}

const _: () = assert!(core::mem::size_of::<IpFrame>() % 8 == 0);

pub enum Parsed {
    Ip,
    NonIp,
    Malformed,
}

/// The frame's bounds, read once. Every read goes through [`Frame::at`]:
/// a pointer check against `end` right before the access, which is what
/// the verifier wants to see. The length for the header-consistency checks
/// is the whole frame's (`bpf_xdp_get_buff_len`: a multi-buffer frame
/// larger than a page has only its first part between `start` and `end`,
/// the rest in fragments); coming from a helper, it is also unrelated to
/// `start` and `end` for LLVM, which cannot use those checks to prove a
/// pointer check redundant and drop it.
struct Frame {
    ctx: *mut xdp_md,
    start: usize,
    end: usize,
    /// The linear part's length until [`Frame::whole`] is asked.
    len: usize,
}

impl Frame {
    #[inline(always)]
    fn new(ctx: &XdpContext) -> Frame {
        let (start, end) = (ctx.data(), ctx.data_end());
        let len = xdpkit_ebpf::unaligned::opaque(end - start);
        Frame {
            ctx: ctx.ctx,
            start,
            end,
            len,
        }
    }

    /// The whole frame's length, fragments included, from here on in
    /// `len`. Asked only when the IP header says the packet goes past the
    /// linear part (a jumbo frame, or a malformed one): the helper costs
    /// about 10 ns, which frames that fit one buffer do not pay.
    #[inline(always)]
    fn whole(&mut self) -> usize {
        // SAFETY: a helper on the program's context.
        self.len = unsafe { bpf_xdp_get_buff_len(self.ctx) } as usize;
        self.len
    }

    /// A pointer to `N` readable bytes at `off`, if the frame holds them.
    #[inline(always)]
    fn at<const N: usize>(&self, off: usize) -> Option<*const u8> {
        if off > MAX_OFFSET {
            return None;
        }
        let p = self.start + off;
        if p + N > self.end {
            return None;
        }
        Some(p as *const u8)
    }

    /// The `N`-byte header at `off`, if the frame holds all of it. Headers
    /// are read whole: a check for one byte (`p + 1 > end`) becomes
    /// `p >= end` in LLVM, from which the verifier learns no range.
    #[inline(always)]
    fn header<const N: usize>(&self, off: usize) -> Option<Header<N>> {
        self.at::<N>(off).map(|p| Header { p })
    }
}

/// `N` bytes of the frame, checked once.
#[derive(Clone, Copy)]
struct Header<const N: usize> {
    p: *const u8,
}

impl<const N: usize> Header<N> {
    #[inline(always)]
    fn byte(self, i: usize) -> u8 {
        // SAFETY: i < N (constant at every call), and N bytes were checked.
        unsafe { *self.p.add(i) }
    }

    #[inline(always)]
    fn be16(self, i: usize) -> u16 {
        u16::from_be_bytes([self.byte(i), self.byte(i + 1)])
    }

    /// The 8 bytes at `i` as they lie in the frame, in one load (store
    /// them with [`store`] to keep their order).
    #[inline(always)]
    fn raw64(self, i: usize) -> u64 {
        debug_assert!(i + 8 <= N);
        // SAFETY: i + 8 <= N (constant at every call), and N bytes were checked.
        unsafe { load::<8>(self.p.add(i)) }
    }

    /// [`Header::raw64`] for 4 bytes.
    #[inline(always)]
    fn raw32(self, i: usize) -> u32 {
        debug_assert!(i + 4 <= N);
        // SAFETY: as for raw64.
        unsafe { load::<4>(self.p.add(i)) as u32 }
    }

    /// [`Header::raw64`] for 2 bytes.
    #[inline(always)]
    fn raw16(self, i: usize) -> u16 {
        debug_assert!(i + 2 <= N);
        // SAFETY: as for raw64.
        unsafe { load::<2>(self.p.add(i)) as u16 }
    }
}

/// Stores `v` at `out` byte for byte as [`load`] read it (native order
/// both ways, so the frame's bytes keep their order).
///
/// # Safety
/// `out` must be valid for a `T` store and aligned for `T`.
#[inline(always)]
unsafe fn store<T>(out: *mut u8, v: T) {
    // SAFETY: the caller's promise.
    unsafe { out.cast::<T>().write(v) }
}

/// Reads the frame into `ip`; the return says which kind it is, and the
/// frame's length: the whole frame's where an IP packet goes past the
/// linear part (or it is not IP), else the linear part's, which holds all
/// of the packet (what a fragment after it could hold is link padding).
#[inline(always)]
pub fn parse(ctx: &XdpContext, ip: &mut IpFrame) -> (Parsed, u64) {
    let mut f = Frame::new(ctx);
    let parsed = parse_frame(&mut f, ip);
    if let Parsed::NonIp | Parsed::Malformed = parsed {
        f.whole();
    }
    (parsed, f.len as u64)
}

#[inline(always)]
fn parse_frame(f: &mut Frame, ip: &mut IpFrame) -> Parsed {
    if f.len < ETH_HLEN {
        return Parsed::Malformed;
    }
    let Some(eth) = f.header::<ETH_HLEN>(0) else {
        return Parsed::Malformed;
    };
    let mut ethertype = eth.be16(12);
    let mut off = ETH_HLEN;
    ip.vlan = NO_VLAN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        let Some(tag) = f.header::<4>(off) else {
            return Parsed::Malformed;
        };
        if ip.vlan == NO_VLAN {
            ip.vlan = u32::from(tag.be16(0) & 0x0fff);
        }
        ethertype = tag.be16(2);
        off += 4;
    }
    match ethertype {
        0x0800 => ipv4(f, off, ip),
        0x86dd => ipv6(f, off, ip),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn ipv4(f: &mut Frame, l3: usize, ip: &mut IpFrame) -> Parsed {
    if l3 + 20 > f.len {
        return Parsed::Malformed;
    }
    let mut avail = f.len - l3;
    let Some(h) = f.header::<20>(l3) else {
        return Parsed::Malformed;
    };
    let vihl = h.byte(0);
    if vihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 || ihl > avail {
        return Parsed::Malformed;
    }
    let total = usize::from(h.be16(2));
    if total > avail {
        avail = f.whole() - l3;
    }
    if total < ihl || total > avail {
        return Parsed::Malformed;
    }
    ip.v6 = false;
    ip.l3 = l3 as u16;
    ip.proto = h.byte(9);
    ip.later_fragment = h.be16(6) & 0x1fff != 0;
    l4(f, l3 + ihl, l3 + total, ip)
}

#[inline(always)]
fn ipv6(f: &mut Frame, l3: usize, ip: &mut IpFrame) -> Parsed {
    if l3 + 40 > f.len {
        return Parsed::Malformed;
    }
    let mut avail = f.len - l3;
    let Some(h) = f.header::<40>(l3) else {
        return Parsed::Malformed;
    };
    if h.byte(0) >> 4 != 6 {
        return Parsed::Malformed;
    }
    let end = 40 + usize::from(h.be16(4));
    if end > avail {
        avail = f.whole() - l3;
    }
    if end > avail {
        return Parsed::Malformed;
    }
    let mut next = h.byte(6);
    ip.v6 = true;
    ip.l3 = l3 as u16;
    ip.later_fragment = false;
    let mut off = 40;
    let mut walked = 0;
    while walked < MAX_IPV6_EXT {
        walked += 1;
        match next {
            0 | 43 | 60 => {
                if off + 8 > end {
                    return Parsed::Malformed;
                }
                let Some(ext) = f.header::<8>(l3 + off) else {
                    return Parsed::Malformed;
                };
                let hlen = (usize::from(ext.byte(1)) + 1) * 8;
                if off + hlen > end {
                    return Parsed::Malformed;
                }
                next = ext.byte(0);
                off += hlen;
            }
            44 => {
                if off + 8 > end {
                    return Parsed::Malformed;
                }
                let Some(frag) = f.header::<8>(l3 + off) else {
                    return Parsed::Malformed;
                };
                next = frag.byte(0);
                off += 8;
                if frag.be16(2) >> 3 != 0 {
                    ip.proto = next;
                    ip.later_fragment = true;
                    ip.has_ports = false;
                    return Parsed::Ip;
                }
            }
            _ => {
                ip.proto = next;
                return l4(f, l3 + off, l3 + end, ip);
            }
        }
    }
    match next {
        0 | 43 | 44 | 60 => Parsed::Malformed,
        _ => {
            ip.proto = next;
            l4(f, l3 + off, l3 + end, ip)
        }
    }
}

/// Copies the source MAC and the IP addresses of a frame [`parse`] found
/// to be IP into `ip` (IPv4 addresses in the first 4 bytes, the rest stays
/// zero). The frame is the one `parse` checked, so every header is there.
#[inline(always)]
pub fn read_addresses(ctx: &XdpContext, ip: &mut IpFrame) {
    let f = Frame::new(ctx);
    if let Some(eth) = f.header::<ETH_HLEN>(0) {
        let mac = ip.smac.as_mut_ptr();
        // SAFETY: `smac` sits at a multiple of 4 in the 8-aligned IpFrame
        // (checked below), so both stores are aligned and inside its 6 bytes.
        unsafe {
            store(mac, eth.raw32(6));
            store(mac.add(4), eth.raw16(10));
        }
    }
    let l3 = usize::from(ip.l3);
    let src = ip.src.as_mut_ptr();
    let dst = ip.dst.as_mut_ptr();
    if ip.v6 {
        if let Some(h) = f.header::<40>(l3) {
            // SAFETY: `src` and `dst` are 16 bytes at offsets 0 and 16 of the
            // 8-aligned IpFrame (checked above): aligned 8-byte stores.
            unsafe {
                store(src, h.raw64(8));
                store(src.add(8), h.raw64(16));
                store(dst, h.raw64(24));
                store(dst.add(8), h.raw64(32));
            }
        }
    } else if let Some(h) = f.header::<20>(l3) {
        // The upper 12 bytes of src and dst stay zero from IpFrame::zero_in.
        // SAFETY: as above, aligned 4-byte stores.
        unsafe {
            store(src, h.raw32(12));
            store(dst, h.raw32(16));
        }
    }
}

const _: () = assert!(core::mem::offset_of!(IpFrame, smac) % 4 == 0);

/// Checks the layer-4 header in `[start, end)` and reads TCP/UDP ports.
#[inline(always)]
fn l4(f: &Frame, start: usize, end: usize, ip: &mut IpFrame) -> Parsed {
    ip.has_ports = false;
    if ip.later_fragment {
        return Parsed::Ip;
    }
    let need = match ip.proto {
        6 => 20,
        17 => 8,
        1 | 58 => 4,
        _ => 0,
    };
    if start + need > end {
        return Parsed::Malformed;
    }
    if ip.proto == 6 || ip.proto == 17 {
        let Some(ports) = f.header::<4>(start) else {
            return Parsed::Malformed;
        };
        ip.sport = ports.be16(0);
        ip.dport = ports.be16(2);
        ip.has_ports = true;
    }
    Parsed::Ip
}
