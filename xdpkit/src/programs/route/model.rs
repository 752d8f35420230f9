//! The reference model of the `route` program: what it does with a frame
//! given the FIB's answer (the kernel's routes and neighbours are the
//! caller's to describe) and its ports. Property tests compare it with the
//! kernel program on random and malformed frames.

use std::net::IpAddr;

use xdpkit_common::route::RouteOutcome;

use crate::model::ETH_HLEN;

/// What the program asks the FIB (`struct bpf_fib_lookup` on input).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FibQuery {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// The packet's length (IPv4 total length, IPv6 payload + 40): the
    /// kernel checks it against the egress MTU.
    pub tot_len: u16,
    /// The IP protocol (IPv6: the first next header).
    pub protocol: u8,
}

/// What the FIB answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FibAnswer {
    /// BPF_FIB_LKUP_RET_SUCCESS: the egress interface and the MACs.
    Forward {
        /// Egress ifindex.
        ifindex: u32,
        /// The egress interface's MAC.
        smac: [u8; 6],
        /// The next hop's MAC.
        dmac: [u8; 6],
    },
    /// Any other return code (BPF_FIB_LKUP_RET_*).
    Code(u32),
}

/// What the program did with a frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteDecision {
    /// Forwarded, or why not.
    pub outcome: RouteOutcome,
    /// The frame as it leaves the program.
    pub output: Vec<u8>,
    /// The query made, if the frame got that far.
    pub query: Option<FibQuery>,
}

/// What `route` does with `frame`: `fib` answers the lookup, `is_port`
/// says whether an egress ifindex is one of the ports.
pub fn decide(
    frame: &[u8],
    fib: impl FnOnce(&FibQuery) -> FibAnswer,
    is_port: impl FnOnce(u32) -> bool,
) -> RouteDecision {
    let pass = |outcome, query| RouteDecision {
        outcome,
        output: frame.to_vec(),
        query,
    };
    let query = match check(frame) {
        Ok(query) => query,
        Err(outcome) => return pass(outcome, None),
    };
    let (ifindex, smac, dmac) = match fib(&query) {
        FibAnswer::Forward {
            ifindex,
            smac,
            dmac,
        } => (ifindex, smac, dmac),
        FibAnswer::Code(code) => return pass(RouteOutcome::of_fib(code), Some(query)),
    };
    if !is_port(ifindex) {
        return pass(RouteOutcome::NotPort, Some(query));
    }
    let mut output = frame.to_vec();
    output[..6].copy_from_slice(&dmac);
    output[6..12].copy_from_slice(&smac);
    if query.dst.is_ipv4() {
        decrease_ttl(&mut output[ETH_HLEN..]);
    } else {
        output[ETH_HLEN + 7] -= 1;
    }
    RouteDecision {
        outcome: RouteOutcome::Forwarded,
        output,
        query: Some(query),
    }
}

/// The kernel's `ip_decrease_ttl` on an IPv4 header: the checksum gains
/// 0x0100 (the TTL is the high byte of its word) with the end-around
/// carry, as the program does it.
pub fn decrease_ttl(ip: &mut [u8]) {
    let check = u16::from_ne_bytes([ip[10], ip[11]]);
    let mut sum = u32::from(check) + u32::from(0x0100u16.to_be());
    sum += u32::from(sum >= 0xffff);
    ip[10..12].copy_from_slice(&(sum as u16).to_ne_bytes());
    ip[8] -= 1;
}

/// The checks before the lookup, in the program's order: the query, or
/// why the frame goes to the stack.
fn check(frame: &[u8]) -> Result<FibQuery, RouteOutcome> {
    let eth = frame.get(..ETH_HLEN).ok_or(RouteOutcome::Malformed)?;
    let v4 = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => true,
        0x86dd => false,
        _ => return Err(RouteOutcome::NotIp),
    };
    if eth[0] & 1 != 0 {
        return Err(RouteOutcome::LinkMulticast);
    }
    if v4 {
        ipv4(frame)
    } else {
        ipv6(frame)
    }
}

fn ipv4(frame: &[u8]) -> Result<FibQuery, RouteOutcome> {
    let h = frame
        .get(ETH_HLEN..ETH_HLEN + 20)
        .ok_or(RouteOutcome::Malformed)?;
    if h[0] >> 4 != 4 || h[0] & 0x0f < 5 {
        return Err(RouteOutcome::Malformed);
    }
    let total = u16::from_be_bytes([h[2], h[3]]);
    if total < 20 || ETH_HLEN + usize::from(total) > frame.len() {
        return Err(RouteOutcome::Malformed);
    }
    if h[0] & 0x0f != 5 {
        return Err(RouteOutcome::Options);
    }
    if !checksum_ok(h) {
        return Err(RouteOutcome::Malformed);
    }
    let src = [h[12], h[13], h[14], h[15]];
    let dst = [h[16], h[17], h[18], h[19]];
    if martian4(src) || martian4(dst) {
        return Err(RouteOutcome::Martian);
    }
    if u16::from_be_bytes([h[6], h[7]]) & 0x3fff != 0 {
        return Err(RouteOutcome::Fragment);
    }
    if h[8] <= 1 {
        return Err(RouteOutcome::TtlExpired);
    }
    Ok(FibQuery {
        src: src.into(),
        dst: dst.into(),
        tot_len: total,
        protocol: h[9],
    })
}

/// Whether an IPv4 header's checksum is right (its words sum to 0xffff).
pub fn checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fn martian4(a: [u8; 4]) -> bool {
    a[0] == 0 || a[0] == 127 || a[0] >= 224
}

fn ipv6(frame: &[u8]) -> Result<FibQuery, RouteOutcome> {
    let h = frame
        .get(ETH_HLEN..ETH_HLEN + 40)
        .ok_or(RouteOutcome::Malformed)?;
    if h[0] >> 4 != 6 {
        return Err(RouteOutcome::Malformed);
    }
    let payload = u16::from_be_bytes([h[4], h[5]]);
    if ETH_HLEN + 40 + usize::from(payload) > frame.len() {
        return Err(RouteOutcome::Malformed);
    }
    let src: [u8; 16] = h[8..24].try_into().expect("16 bytes");
    let dst: [u8; 16] = h[24..40].try_into().expect("16 bytes");
    if martian6(&src) || martian6(&dst) {
        return Err(RouteOutcome::Martian);
    }
    match h[6] {
        0 => return Err(RouteOutcome::Options),
        44 => return Err(RouteOutcome::Fragment),
        _ => {}
    }
    if h[7] <= 1 {
        return Err(RouteOutcome::TtlExpired);
    }
    Ok(FibQuery {
        src: src.into(),
        dst: dst.into(),
        tot_len: payload.saturating_add(40),
        protocol: h[6],
    })
}

fn martian6(a: &[u8; 16]) -> bool {
    let n = u128::from_be_bytes(*a);
    n <= 1 || a[0] == 0xff || (a[0] == 0xfe && a[1] & 0xc0 == 0x80)
}

#[cfg(test)]
mod tests {
    use etherparse::PacketBuilder;

    use super::*;

    const SMAC: [u8; 6] = [2, 0, 0, 0, 0, 0xaa];
    const DMAC: [u8; 6] = [2, 0, 0, 0, 0, 0xbb];

    fn udp4(ttl: u8) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([198, 18, 1, 2], [198, 18, 2, 2], ttl)
            .udp(1000, 2000)
            .write(&mut f, &[0; 10])
            .unwrap();
        f
    }

    fn forward(_: &FibQuery) -> FibAnswer {
        FibAnswer::Forward {
            ifindex: 7,
            smac: SMAC,
            dmac: DMAC,
        }
    }

    fn fix_checksum(h: &mut [u8]) {
        h[10..12].copy_from_slice(&[0, 0]);
        let mut sum: u32 = h
            .chunks(2)
            .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
            .sum();
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    }

    #[test]
    fn forwarding_lowers_the_ttl_keeps_the_checksum_right_and_sets_the_macs() {
        for ttl in [2u8, 64, 255] {
            let d = decide(&udp4(ttl), forward, |i| i == 7);
            assert_eq!(d.outcome, RouteOutcome::Forwarded);
            assert_eq!(d.output[ETH_HLEN + 8], ttl - 1);
            assert!(checksum_ok(&d.output[ETH_HLEN..ETH_HLEN + 20]));
            assert_eq!(&d.output[..6], &DMAC);
            assert_eq!(&d.output[6..12], &SMAC);
        }
    }

    #[test]
    fn the_stack_gets_what_it_must_see_untouched() {
        let ttl1 = udp4(1);
        let d = decide(&ttl1, forward, |_| true);
        assert_eq!((d.outcome, d.output), (RouteOutcome::TtlExpired, ttl1));
        let d = decide(&udp4(64), |_| FibAnswer::Code(7), |_| true);
        assert_eq!(d.outcome, RouteOutcome::NoNeighbour);
        let d = decide(&udp4(64), forward, |_| false);
        assert_eq!(d.outcome, RouteOutcome::NotPort);
        let mut frag = udp4(64);
        frag[ETH_HLEN + 6] = 0x20; // more fragments
        assert_eq!(
            decide(&frag, forward, |_| true).outcome,
            RouteOutcome::Malformed,
            "the checksum is checked before the fragment bits"
        );
        fix_checksum(&mut frag[ETH_HLEN..ETH_HLEN + 20]);
        assert_eq!(
            decide(&frag, forward, |_| true).outcome,
            RouteOutcome::Fragment
        );
        let mut arp = udp4(64);
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(decide(&arp, forward, |_| true).outcome, RouteOutcome::NotIp);
    }
}
