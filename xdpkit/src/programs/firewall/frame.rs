//! How the firewall reads a frame: Ethernet, up to two VLAN tags, IPv4
//! (options, IHL and length checks), IPv6 with a bounded walk over extension
//! headers, and TCP/UDP/ICMP/ICMPv6. This is the reference the kernel
//! program is tested against; it never reads past the frame.

use std::net::IpAddr;

use super::rule::proto;

const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;
/// VLAN tags read before the EtherType (802.1ad outer + 802.1Q inner).
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers walked before giving up (the frame is malformed).
pub const MAX_IPV6_EXT: usize = 6;

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DEST_OPTS: u8 = 60;

/// Where a frame stands with respect to IP fragmentation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// Not a fragment.
    No,
    /// First fragment: carries the layer-4 header, matched normally.
    First,
    /// A later fragment: no layer-4 header.
    Later,
}

/// What the firewall knows about an IP frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpFrame {
    /// Outer VLAN id, if tagged.
    pub vlan: Option<u16>,
    /// Source MAC.
    pub smac: [u8; 6],
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 protocol or the IPv6 header after extension headers.
    pub proto: u8,
    /// Fragment state.
    pub fragment: Fragment,
    /// (source, destination) ports for TCP and UDP with a layer-4 header.
    pub ports: Option<(u16, u16)>,
}

/// The firewall's reading of a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parsed {
    /// An IP frame it can judge.
    Ip(IpFrame),
    /// Not IP (ARP, LLDP, ...), after up to two VLAN tags.
    NonIp,
    /// Truncated or inconsistent headers; the reason is for people.
    Malformed(&'static str),
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Reads `frame` as the firewall program does.
pub fn parse(frame: &[u8]) -> Parsed {
    if frame.len() < ETH_HLEN {
        return Parsed::Malformed("shorter than an Ethernet header");
    }
    let mut smac = [0u8; 6];
    smac.copy_from_slice(&frame[6..12]);
    let mut ethertype = be16(frame, 12).unwrap_or(0);
    let mut offset = ETH_HLEN;
    let mut vlan = None;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        let (Some(tci), Some(next)) = (be16(frame, offset), be16(frame, offset + 2)) else {
            return Parsed::Malformed("truncated VLAN tag");
        };
        vlan.get_or_insert(tci & 0x0fff);
        ethertype = next;
        offset += 4;
    }
    let l3 = &frame[offset..];
    match ethertype {
        ETH_P_IPV4 => parse_ipv4(l3, vlan, smac),
        ETH_P_IPV6 => parse_ipv6(l3, vlan, smac),
        _ => Parsed::NonIp,
    }
}

fn parse_ipv4(ip: &[u8], vlan: Option<u16>, smac: [u8; 6]) -> Parsed {
    if ip.len() < 20 {
        return Parsed::Malformed("truncated IPv4 header");
    }
    if ip[0] >> 4 != 4 {
        return Parsed::Malformed("IPv4 EtherType but version is not 4");
    }
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ihl < 20 {
        return Parsed::Malformed("IPv4 IHL below 5");
    }
    if ihl > ip.len() {
        return Parsed::Malformed("IPv4 options cut short");
    }
    let total = usize::from(be16(ip, 2).unwrap_or(0));
    if total < ihl {
        return Parsed::Malformed("IPv4 total length below header length");
    }
    if total > ip.len() {
        return Parsed::Malformed("IPv4 total length beyond the frame");
    }
    let frag = be16(ip, 6).unwrap_or(0);
    let fragment = match (frag & 0x1fff, frag & 0x2000 != 0) {
        (0, false) => Fragment::No,
        (0, true) => Fragment::First,
        _ => Fragment::Later,
    };
    let src = IpAddr::from([ip[12], ip[13], ip[14], ip[15]]);
    let dst = IpAddr::from([ip[16], ip[17], ip[18], ip[19]]);
    finish(vlan, smac, src, dst, ip[9], fragment, &ip[ihl..total])
}

fn parse_ipv6(ip: &[u8], vlan: Option<u16>, smac: [u8; 6]) -> Parsed {
    if ip.len() < 40 {
        return Parsed::Malformed("truncated IPv6 header");
    }
    if ip[0] >> 4 != 6 {
        return Parsed::Malformed("IPv6 EtherType but version is not 6");
    }
    let end = 40 + usize::from(be16(ip, 4).unwrap_or(0));
    if end > ip.len() {
        return Parsed::Malformed("IPv6 payload length beyond the frame");
    }
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&ip[8..24]);
    dst.copy_from_slice(&ip[24..40]);
    let (src, dst) = (IpAddr::from(src), IpAddr::from(dst));
    let mut next = ip[6];
    let mut offset = 40;
    let mut fragment = Fragment::No;
    for _ in 0..MAX_IPV6_EXT {
        match next {
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS => {
                if offset + 8 > end {
                    return Parsed::Malformed("IPv6 extension header cut short");
                }
                let len = (usize::from(ip[offset + 1]) + 1) * 8;
                if offset + len > end {
                    return Parsed::Malformed("IPv6 extension header cut short");
                }
                next = ip[offset];
                offset += len;
            }
            IPV6_FRAGMENT => {
                if offset + 8 > end {
                    return Parsed::Malformed("IPv6 fragment header cut short");
                }
                let field = be16(ip, offset + 2).unwrap_or(0);
                next = ip[offset];
                offset += 8;
                if field >> 3 != 0 {
                    return finish(vlan, smac, src, dst, next, Fragment::Later, &[]);
                }
                if field & 1 != 0 {
                    fragment = Fragment::First;
                }
            }
            _ => return finish(vlan, smac, src, dst, next, fragment, &ip[offset..end]),
        }
    }
    match next {
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_FRAGMENT => {
            Parsed::Malformed("more IPv6 extension headers than the walk allows")
        }
        _ => finish(vlan, smac, src, dst, next, fragment, &ip[offset..end]),
    }
}

/// Checks the layer-4 header (unless this is a later fragment) and reads ports.
fn finish(
    vlan: Option<u16>,
    smac: [u8; 6],
    src: IpAddr,
    dst: IpAddr,
    l4_proto: u8,
    fragment: Fragment,
    l4: &[u8],
) -> Parsed {
    let mut ports = None;
    if fragment != Fragment::Later {
        let need = match l4_proto {
            proto::TCP => 20,
            proto::UDP => 8,
            proto::ICMP | proto::ICMPV6 => 4,
            _ => 0,
        };
        if l4.len() < need {
            return Parsed::Malformed("layer-4 header cut short");
        }
        if l4_proto == proto::TCP || l4_proto == proto::UDP {
            ports = Some((be16(l4, 0).unwrap_or(0), be16(l4, 2).unwrap_or(0)));
        }
    }
    Parsed::Ip(IpFrame {
        vlan,
        smac,
        src,
        dst,
        proto: l4_proto,
        fragment,
        ports,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn udp4() -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([198, 18, 0, 1], [198, 18, 0, 2], 64)
            .udp(1234, 53)
            .write(&mut f, &[1, 2, 3])
            .unwrap();
        f
    }

    #[test]
    fn reads_udp_over_ipv4() {
        let Parsed::Ip(ip) = parse(&udp4()) else {
            panic!()
        };
        assert_eq!(ip.smac, MAC_A);
        assert_eq!(ip.src, IpAddr::from([198, 18, 0, 1]));
        assert_eq!(
            (ip.proto, ip.ports, ip.fragment, ip.vlan),
            (proto::UDP, Some((1234, 53)), Fragment::No, None)
        );
    }

    #[test]
    fn reads_qinq_and_takes_the_outer_tag() {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .double_vlan(100.try_into().unwrap(), 200.try_into().unwrap())
            .ipv6(
                [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                64,
            )
            .tcp(4000, 443, 1, 1000)
            .write(&mut f, &[])
            .unwrap();
        let Parsed::Ip(ip) = parse(&f) else {
            panic!("{:?}", parse(&f))
        };
        assert_eq!(
            (ip.vlan, ip.proto, ip.ports),
            (Some(100), proto::TCP, Some((4000, 443)))
        );
    }

    #[test]
    fn malformed_ipv4_is_caught_without_reading_past_the_end() {
        let good = udp4();
        let mut bad_ihl = good.clone();
        bad_ihl[14] = 0x44;
        assert_eq!(parse(&bad_ihl), Parsed::Malformed("IPv4 IHL below 5"));
        let mut long_total = good.clone();
        long_total[16] = 0xff;
        assert_eq!(
            parse(&long_total),
            Parsed::Malformed("IPv4 total length beyond the frame")
        );
        for cut in 0..good.len() {
            // Every prefix parses to something, and never panics.
            let _ = parse(&good[..cut]);
        }
        assert_eq!(
            parse(&good[..14 + 20 + 4]),
            Parsed::Malformed("IPv4 total length beyond the frame")
        );
    }

    #[test]
    fn later_fragments_have_no_ports() {
        let mut f = udp4();
        f[14 + 6] = 0x00;
        f[14 + 7] = 0x10; // offset 16 (x8 bytes)
        let Parsed::Ip(ip) = parse(&f) else { panic!() };
        assert_eq!((ip.fragment, ip.ports), (Fragment::Later, None));
        f[14 + 6] = 0x20;
        f[14 + 7] = 0x00; // MF, offset 0
        let Parsed::Ip(ip) = parse(&f) else { panic!() };
        assert_eq!((ip.fragment, ip.ports), (Fragment::First, Some((1234, 53))));
    }

    #[test]
    fn non_ip_is_non_ip() {
        let mut arp = vec![0u8; 42];
        arp[12] = 0x08;
        arp[13] = 0x06;
        assert_eq!(parse(&arp), Parsed::NonIp);
        assert_eq!(
            parse(&arp[..13]),
            Parsed::Malformed("shorter than an Ethernet header")
        );
    }
}
