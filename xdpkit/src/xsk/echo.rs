//! Turning a received frame into its reply in place (`xdpkit xsk echo`).

const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_VLAN: [u16; 2] = [0x8100, 0x88a8];
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;

/// Swaps the Ethernet addresses, and where present the IPv4 or IPv6
/// addresses and the UDP or TCP ports (behind at most one VLAN tag), so the
/// frame goes back to its sender. Checksums stay right without an update:
/// they are sums, and swapping two fields keeps a sum. Returns false (the
/// frame untouched) if it is shorter than an Ethernet header; other frames
/// get what of them can be swapped (ARP: only the MACs).
pub fn swap_addresses(frame: &mut [u8]) -> bool {
    if frame.len() < 14 {
        return false;
    }
    let (dst, src) = frame.split_at_mut(6);
    dst.swap_with_slice(&mut src[..6]);
    let mut l3 = 14;
    let mut proto = u16::from_be_bytes([frame[12], frame[13]]);
    if ETH_P_VLAN.contains(&proto) && frame.len() >= 18 {
        proto = u16::from_be_bytes([frame[16], frame[17]]);
        l3 = 18;
    }
    let ip = &mut frame[l3..];
    let (l4, next) = match proto {
        ETH_P_IPV4 if ip.len() >= 20 && ip[0] >> 4 == 4 => {
            let (a, b) = ip[12..20].split_at_mut(4);
            a.swap_with_slice(b);
            // Only the first fragment carries the ports.
            let fragment_offset = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
            let header = usize::from(ip[0] & 0x0f) * 4;
            (header, (fragment_offset == 0).then_some(ip[9]))
        }
        ETH_P_IPV6 if ip.len() >= 40 && ip[0] >> 4 == 6 => {
            let (a, b) = ip[8..40].split_at_mut(16);
            a.swap_with_slice(b);
            (40, Some(ip[6]))
        }
        _ => return true,
    };
    if matches!(next, Some(IPPROTO_UDP | IPPROTO_TCP)) && ip.len() >= l4 + 4 {
        let (a, b) = ip[l4..l4 + 4].split_at_mut(2);
        a.swap_with_slice(b);
    }
    true
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    const MAC_A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const MAC_B: [u8; 6] = [2, 0, 0, 0, 0, 2];
    const IP6_A: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const IP6_B: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// A UDP/IPv4 frame from (mac, ip, port) `a` to `b`, checksums computed.
    fn udp4(a: ([u8; 6], [u8; 4], u16), b: ([u8; 6], [u8; 4], u16)) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(a.0, b.0)
            .ipv4(a.1, b.1, 64)
            .udp(a.2, b.2)
            .write(&mut f, b"hello")
            .unwrap();
        f
    }

    /// A TCP/IPv6 frame from `a` to `b`, checksum computed.
    fn tcp6(a: ([u8; 6], [u8; 16], u16), b: ([u8; 6], [u8; 16], u16)) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2(a.0, b.0)
            .ipv6(a.1, b.1, 64)
            .tcp(a.2, b.2, 1, 1000)
            .write(&mut f, b"data")
            .unwrap();
        f
    }

    #[test]
    fn the_reply_is_the_frame_built_the_other_way_round() {
        // Byte for byte, checksums included.
        let a4 = (MAC_A, [198, 18, 0, 1], 40000);
        let b4 = (MAC_B, [198, 18, 0, 2], 7);
        let mut frame = udp4(a4, b4);
        assert!(swap_addresses(&mut frame));
        assert_eq!(frame, udp4(b4, a4));
        let a6 = (MAC_A, IP6_A, 40000);
        let b6 = (MAC_B, IP6_B, 80);
        let mut frame = tcp6(a6, b6);
        assert!(swap_addresses(&mut frame));
        assert_eq!(frame, tcp6(b6, a6));
    }

    #[test]
    fn short_and_non_ip_frames() {
        let mut short = vec![1u8; 13];
        assert!(!swap_addresses(&mut short));
        assert_eq!(short, vec![1u8; 13]);
        let body = [[0x08, 0x06].as_slice(), &[0u8; 28]].concat();
        let mut arp = [MAC_B.as_slice(), &MAC_A, &body].concat();
        assert!(swap_addresses(&mut arp));
        assert_eq!(
            arp,
            [MAC_A.as_slice(), &MAC_B, &body].concat(),
            "only the MACs"
        );
    }
}
