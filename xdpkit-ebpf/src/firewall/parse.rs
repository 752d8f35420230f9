//! Frame reading, identical in outcome to xdpkit's `firewall::frame` (the
//! reference): Ethernet, up to two VLAN tags, IPv4 with IHL/length checks,
//! IPv6 with a bounded extension-header walk, TCP/UDP/ICMP/ICMPv6.

use aya_ebpf::{helpers::bpf_xdp_load_bytes, programs::XdpContext};

const ETH_HLEN: usize = 14;
const MAX_VLAN_TAGS: usize = 2;
const MAX_IPV6_EXT: usize = 6;
/// No XDP frame is longer; offsets beyond it are cut short anyway, and the
/// bound lets the verifier track offsets.
const MAX_OFFSET: usize = 4096;

pub const NO_VLAN: u32 = u32::MAX;

pub struct IpFrame {
    pub vlan: u32,
    pub smac: [u8; 6],
    pub v6: bool,
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub proto: u8,
    pub later_fragment: bool,
    pub has_ports: bool,
    pub sport: u16,
    pub dport: u16,
}

pub enum Parsed {
    Ip,
    NonIp,
    Malformed,
}

/// `N` bytes at `off`. The kernel checks the bounds (bpf_xdp_load_bytes):
/// with direct packet access LLVM proves bounds from length arithmetic and
/// drops pointer checks the verifier needs.
#[inline(always)]
fn load<const N: usize>(ctx: &XdpContext, off: usize) -> Option<[u8; N]> {
    if off >= MAX_OFFSET {
        return None;
    }
    let mut buf = [0u8; N];
    // SAFETY: buf is N writable bytes; the helper fails rather than read
    // past the frame.
    let ret = unsafe { bpf_xdp_load_bytes(ctx.ctx, off as u32, buf.as_mut_ptr().cast(), N as u32) };
    (ret == 0).then_some(buf)
}

#[inline(always)]
fn byte(ctx: &XdpContext, off: usize) -> Option<u8> {
    load::<1>(ctx, off).map(|b| b[0])
}

#[inline(always)]
fn be16(ctx: &XdpContext, off: usize) -> Option<u16> {
    load::<2>(ctx, off).map(u16::from_be_bytes)
}

/// Reads the frame into `ip`; the return says which kind it is.
#[inline(always)]
pub fn parse(ctx: &XdpContext, ip: &mut IpFrame) -> Parsed {
    let len = ctx.data_end() - ctx.data();
    if len < ETH_HLEN {
        return Parsed::Malformed;
    }
    let Some(smac) = load::<6>(ctx, 6) else {
        return Parsed::Malformed;
    };
    ip.smac = smac;
    let Some(mut ethertype) = be16(ctx, 12) else {
        return Parsed::Malformed;
    };
    let mut off = ETH_HLEN;
    ip.vlan = NO_VLAN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != 0x8100 && ethertype != 0x88a8 {
            break;
        }
        let (Some(tci), Some(next)) = (be16(ctx, off), be16(ctx, off + 2)) else {
            return Parsed::Malformed;
        };
        if ip.vlan == NO_VLAN {
            ip.vlan = u32::from(tci & 0x0fff);
        }
        ethertype = next;
        off += 4;
    }
    match ethertype {
        0x0800 => ipv4(ctx, off, len, ip),
        0x86dd => ipv6(ctx, off, len, ip),
        _ => Parsed::NonIp,
    }
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize, len: usize, ip: &mut IpFrame) -> Parsed {
    let avail = len - l3;
    if avail < 20 {
        return Parsed::Malformed;
    }
    let Some(vihl) = byte(ctx, l3) else {
        return Parsed::Malformed;
    };
    if vihl >> 4 != 4 {
        return Parsed::Malformed;
    }
    let ihl = usize::from(vihl & 0x0f) * 4;
    if ihl < 20 || ihl > avail {
        return Parsed::Malformed;
    }
    let (Some(total), Some(frag), Some(proto)) =
        (be16(ctx, l3 + 2), be16(ctx, l3 + 6), byte(ctx, l3 + 9))
    else {
        return Parsed::Malformed;
    };
    let total = usize::from(total);
    if total < ihl || total > avail {
        return Parsed::Malformed;
    }
    ip.v6 = false;
    ip.src = [0; 16];
    ip.dst = [0; 16];
    let Some(addrs) = load::<8>(ctx, l3 + 12) else {
        return Parsed::Malformed;
    };
    ip.src[..4].copy_from_slice(&addrs[..4]);
    ip.dst[..4].copy_from_slice(&addrs[4..]);
    ip.proto = proto;
    ip.later_fragment = frag & 0x1fff != 0;
    l4(ctx, l3 + ihl, l3 + total, ip)
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize, len: usize, ip: &mut IpFrame) -> Parsed {
    let avail = len - l3;
    if avail < 40 {
        return Parsed::Malformed;
    }
    let (Some(v), Some(payload), Some(mut next)) =
        (byte(ctx, l3), be16(ctx, l3 + 4), byte(ctx, l3 + 6))
    else {
        return Parsed::Malformed;
    };
    if v >> 4 != 6 {
        return Parsed::Malformed;
    }
    let end = 40 + usize::from(payload);
    if end > avail {
        return Parsed::Malformed;
    }
    ip.v6 = true;
    let (Some(src), Some(dst)) = (load::<16>(ctx, l3 + 8), load::<16>(ctx, l3 + 24)) else {
        return Parsed::Malformed;
    };
    ip.src = src;
    ip.dst = dst;
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
                let (Some(nh), Some(hlen)) = (byte(ctx, l3 + off), byte(ctx, l3 + off + 1)) else {
                    return Parsed::Malformed;
                };
                let hlen = (usize::from(hlen) + 1) * 8;
                if off + hlen > end {
                    return Parsed::Malformed;
                }
                next = nh;
                off += hlen;
            }
            44 => {
                if off + 8 > end {
                    return Parsed::Malformed;
                }
                let (Some(nh), Some(field)) = (byte(ctx, l3 + off), be16(ctx, l3 + off + 2)) else {
                    return Parsed::Malformed;
                };
                next = nh;
                off += 8;
                if field >> 3 != 0 {
                    ip.proto = next;
                    ip.later_fragment = true;
                    ip.has_ports = false;
                    return Parsed::Ip;
                }
            }
            _ => {
                ip.proto = next;
                return l4(ctx, l3 + off, l3 + end, ip);
            }
        }
    }
    match next {
        0 | 43 | 44 | 60 => Parsed::Malformed,
        _ => {
            ip.proto = next;
            l4(ctx, l3 + off, l3 + end, ip)
        }
    }
}

/// Checks the layer-4 header in `[start, end)` and reads TCP/UDP ports.
#[inline(always)]
fn l4(ctx: &XdpContext, start: usize, end: usize, ip: &mut IpFrame) -> Parsed {
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
        let (Some(sport), Some(dport)) = (be16(ctx, start), be16(ctx, start + 2)) else {
            return Parsed::Malformed;
        };
        ip.sport = sport;
        ip.dport = dport;
        ip.has_ports = true;
    }
    Parsed::Ip
}
