//! A traffic generator that runs where pktgen and xdp-trafficgen do not:
//! BPF_PROG_TEST_RUN in live-frames mode runs `xdpkit_gen` on copies of one
//! frame, and its `XDP_TX` sends each copy out of an interface, at several
//! million frames a second on one core. Sources can be drawn at random from
//! an IPv4 prefix (a DDoS from many addresses).

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    time::{Duration, Instant},
};

use aya::{
    maps::Array,
    programs::{TestRun as _, TestRunAttrs, TestRunOptions},
    Ebpf,
};
use ipnet::{IpNet, Ipv4Net};
use xdpkit_common::trafficgen::{
    GenConfig, GenHeaders, GEN_CONFIG, GEN_HEADERS, GEN_HEADERS_MAX, MAX_L4_CSUM,
};

use crate::{iface, object, Error, Result};

/// The generator's object (run by test_run, never attached).
pub const OBJECT: object::Object = object::embedded!("trafficgen");

const SYMBOL: &str = "xdpkit_gen";
/// Frames per BPF_PROG_TEST_RUN call: about 20 ms at full speed, so a
/// duration is kept to within a few tens of milliseconds.
const CHUNK: u32 = 1 << 18;
/// Frames the kernel builds and sends per batch (it allows up to 256).
const BATCH: u32 = 64;

/// Longest sleep between paced bursts.
const PACE_TICK: Duration = Duration::from_millis(1);

/// When a run stops.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// After this many frames.
    Count(u64),
    /// After this long.
    Duration(Duration),
}

/// What one run sent.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sent {
    /// Frames handed to the interface (some may be dropped if its peer's
    /// queue is full: count them at the receiver).
    pub frames: u64,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// A generator bound to one interface and one frame.
pub struct Generator {
    ebpf: Ebpf,
    ifindex: u32,
    frame: Vec<u8>,
}

impl Generator {
    /// Sends `frame` out of `ifname`; with `random_src`, each IPv4 frame gets
    /// a source drawn from that prefix.
    ///
    /// # Errors
    ///
    /// The interface does not exist, the frame is shorter than an Ethernet
    /// header, or the program cannot be loaded (needs root).
    pub fn new(ifname: &str, frame: Vec<u8>, random_src: Option<Ipv4Net>) -> Result<Generator> {
        Generator::with_sources(ifname, frame, random_src.map(IpNet::V4))
    }

    /// Like [`Generator::new`], for IPv4 or IPv6 frames: each frame gets a
    /// source drawn from `random_src`, of the frame's family. For IPv6 the
    /// random bits are those of the prefix's host part inside the 32-bit
    /// word where the prefix ends (at most 32 bits vary; the rest of the
    /// frame's source is kept, the prefix's bits are set).
    pub fn with_sources(
        ifname: &str,
        mut frame: Vec<u8>,
        random_src: Option<IpNet>,
    ) -> Result<Generator> {
        if frame.len() < 14 {
            return Err(Error::InvalidArgument(format!(
                "a generated frame needs at least an Ethernet header (14 bytes), got {}",
                frame.len()
            )));
        }
        let ifindex = iface::index(ifname)?;
        let mut ebpf = OBJECT.load()?;
        let cfg = match random_src {
            None => GenConfig::default(),
            Some(IpNet::V4(net)) => GenConfig {
                src_base: u32::from(net.network()),
                src_random: u32::from(net.hostmask()),
                l4_csum: l4_checksum_offset(&frame).unwrap_or(0),
                src_word: 0,
            },
            Some(IpNet::V6(net)) => {
                // The frame carries the prefix; one word of it varies.
                if frame.len() >= 14 + 40 && frame[12..14] == [0x86, 0xdd] {
                    let mut src = u128::from_be_bytes(frame[22..38].try_into().unwrap_or_default());
                    let mask = u128::from(net.hostmask());
                    src = (src & mask) | u128::from(net.network());
                    frame[22..38].copy_from_slice(&src.to_be_bytes());
                }
                let word = (u32::from(net.prefix_len()) / 32).min(3);
                let shift = 96 - 32 * word;
                let bits = |a: u128| (a >> shift) as u32;
                GenConfig {
                    src_base: bits(u128::from(net.network())),
                    src_random: bits(u128::from(net.hostmask())),
                    l4_csum: l4_checksum_offset(&frame).unwrap_or(0),
                    src_word: word,
                }
            }
        };
        let map = ebpf
            .map_mut(GEN_CONFIG)
            .ok_or_else(|| object::missing_map(GEN_CONFIG))?;
        let mut array: Array<_, GenConfig> = Array::try_from(map).map_err(|e| Error::Map {
            what: "open the generator's config".to_string(),
            source: e.into(),
        })?;
        array.set(0, cfg, 0).map_err(|e| Error::Map {
            what: "write the generator's config".to_string(),
            source: e.into(),
        })?;
        object::program(&mut ebpf, SYMBOL, "trafficgen")?;
        let mut generator = Generator {
            ebpf,
            ifindex,
            frame,
        };
        // Always: a receiver that rewrites frames in place (a router, a
        // balancer, a NAT) would otherwise corrupt the frames that follow.
        generator.restore_headers()?;
        Ok(generator)
    }

    /// Rewrites the frame's headers (its first 128 bytes at most) on every
    /// copy before sending it: needed when the receiver rewrites frames in
    /// place (a balancer, a NAT, a router), since live-frames mode recycles
    /// pages with whatever the receiver left in them. Costs the generator
    /// a copy per frame; every generator does it from its start.
    ///
    /// # Errors
    ///
    /// The generator's map cannot be written.
    fn restore_headers(&mut self) -> Result<()> {
        let mut h = GenHeaders::default();
        let len = self.frame.len().min(GEN_HEADERS_MAX);
        h.bytes[..len].copy_from_slice(&self.frame[..len]);
        h.len = len as u32;
        let map = self
            .ebpf
            .map_mut(GEN_HEADERS)
            .ok_or_else(|| object::missing_map(GEN_HEADERS))?;
        let mut array: Array<_, GenHeaders> = Array::try_from(map).map_err(|e| Error::Map {
            what: "open the generator's headers".to_string(),
            source: e.into(),
        })?;
        array.set(0, h, 0).map_err(|e| Error::Map {
            what: "write the generator's headers".to_string(),
            source: e.into(),
        })
    }

    /// Sends `count` frames as fast as the kernel can.
    pub fn send(&mut self, count: u64) -> Result<Sent> {
        self.send_paced(Limit::Count(count), None)
    }

    /// Sends at full speed for `duration`.
    pub fn send_for(&mut self, duration: Duration) -> Result<Sent> {
        self.send_paced(Limit::Duration(duration), None)
    }

    /// Sends until `limit`, at most `pps` frames a second if given (in
    /// bursts of about a millisecond's worth), else at full speed.
    pub fn send_paced(&mut self, limit: Limit, pps: Option<u64>) -> Result<Sent> {
        let started = Instant::now();
        let mut frames: u64 = 0;
        loop {
            let elapsed = started.elapsed();
            let mut n = match limit {
                Limit::Count(count) if frames >= count => break,
                Limit::Count(count) => count - frames,
                Limit::Duration(d) if elapsed >= d => break,
                Limit::Duration(_) => u64::MAX,
            }
            .min(u64::from(CHUNK));
            if let Some(pps) = pps.filter(|p| *p > 0) {
                let due = (elapsed.as_secs_f64() * pps as f64) as u64 + 1;
                if due <= frames {
                    let next = Duration::from_secs_f64((frames + 1) as f64 / pps as f64);
                    std::thread::sleep(next.saturating_sub(elapsed).min(PACE_TICK));
                    continue;
                }
                n = n.min(due - frames);
            }
            self.run(n as u32)?;
            frames += n;
        }
        Ok(Sent {
            frames,
            elapsed: started.elapsed(),
        })
    }

    fn run(&mut self, repeat: u32) -> Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex. The kernel wants data_end equal to
        // the frame's length and sends XDP_TX out of ingress_ifindex.
        let mut ctx = [0u8; 24];
        ctx[4..8].copy_from_slice(&(self.frame.len() as u32).to_ne_bytes());
        ctx[12..16].copy_from_slice(&self.ifindex.to_ne_bytes());
        let program = object::program(&mut self.ebpf, SYMBOL, "trafficgen")?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(&self.frame);
        opts.ctx_in = Some(&ctx);
        opts.repeat = repeat;
        opts.attrs = TestRunAttrs::new().xdp_live_frames(BATCH);
        program.test_run(opts).map_err(|source| Error::TestRun {
            program: "trafficgen",
            source,
        })?;
        Ok(())
    }
}

/// An Ethernet + IPv4 + UDP frame of `size` bytes (at least 42), checksums set.
pub fn udp_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    size: usize,
) -> Vec<u8> {
    let size = size.max(42);
    let mut f = vec![0u8; size];
    let ip_len = (size - 14) as u16;
    eth_ipv4(&mut f, (src_mac, dst_mac), (src, dst), 17, ip_len);
    let udp = &mut f[34..];
    udp[0..2].copy_from_slice(&ports.0.to_be_bytes());
    udp[2..4].copy_from_slice(&ports.1.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    // UDP checksum 0: none (allowed for IPv4), so a changed source needs no fix-up.
    f
}

/// An Ethernet + IPv6 + UDP frame of `size` bytes (at least 62), UDP
/// checksum set (IPv6 requires one).
pub fn udp6_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv6Addr,
    dst: Ipv6Addr,
    ports: (u16, u16),
    size: usize,
) -> Vec<u8> {
    let size = size.max(62);
    let mut f = vec![0u8; size];
    let payload = (size - 54) as u16;
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
    let ip = &mut f[14..54];
    ip[0] = 0x60;
    ip[4..6].copy_from_slice(&payload.to_be_bytes());
    ip[6] = 17;
    ip[7] = 64;
    ip[8..24].copy_from_slice(&src.octets());
    ip[24..40].copy_from_slice(&dst.octets());
    let udp = &mut f[54..];
    udp[0..2].copy_from_slice(&ports.0.to_be_bytes());
    udp[2..4].copy_from_slice(&ports.1.to_be_bytes());
    udp[4..6].copy_from_slice(&payload.to_be_bytes());
    let mut pseudo = Vec::with_capacity(40 + usize::from(payload));
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&u32::from(payload).to_be_bytes());
    pseudo.extend_from_slice(&[0, 0, 0, 17]);
    pseudo.extend_from_slice(&f[54..]);
    let csum = match !ones_complement_sum(&pseudo) {
        0 => 0xffff,
        c => c,
    };
    f[60..62].copy_from_slice(&csum.to_be_bytes());
    f
}

/// An Ethernet + IPv4 + TCP SYN frame: a 20-byte TCP header, checksums
/// set, padded with zeros to `size` bytes (at least 54) after the IP packet.
pub fn tcp_syn_frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    ports: (u16, u16),
    size: usize,
) -> Vec<u8> {
    const IP_LEN: u16 = 40;
    let mut f = vec![0u8; size.max(54)];
    eth_ipv4(&mut f, (src_mac, dst_mac), (src, dst), 6, IP_LEN);
    let tcp = &mut f[34..54];
    tcp[0..2].copy_from_slice(&ports.0.to_be_bytes());
    tcp[2..4].copy_from_slice(&ports.1.to_be_bytes());
    tcp[4..8].copy_from_slice(&0x7864_6b31u32.to_be_bytes()); // sequence "xdk1"
    tcp[12] = 5 << 4; // header length: 5 words
    tcp[13] = 0x02; // SYN
    tcp[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(tcp);
    let csum = !ones_complement_sum(&pseudo);
    tcp[16..18].copy_from_slice(&csum.to_be_bytes());
    f
}

/// Writes the Ethernet header and a 20-byte IPv4 header (TTL 64, don't
/// fragment, checksum set) at the start of `f`.
fn eth_ipv4(
    f: &mut [u8],
    (src_mac, dst_mac): ([u8; 6], [u8; 6]),
    (src, dst): (Ipv4Addr, Ipv4Addr),
    proto: u8,
    ip_len: u16,
) {
    f[0..6].copy_from_slice(&dst_mac);
    f[6..12].copy_from_slice(&src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[6] = 0x40;
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let csum = !ones_complement_sum(ip);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
}

/// Where the L4 checksum of a TCP frame, or UDP frame with a checksum,
/// sits (IPv4 or IPv6 without extension headers): it covers the source
/// address, so the generator fixes it up after drawing a source.
fn l4_checksum_offset(frame: &[u8]) -> Option<u32> {
    let (l4, proto) = match frame.get(12..14)? {
        [0x08, 0x00] => (14 + usize::from(frame.get(14)? & 0x0f) * 4, *frame.get(23)?),
        [0x86, 0xdd] => (14 + 40, *frame.get(20)?),
        _ => return None,
    };
    let at = match proto {
        6 => l4 + 16,
        17 if frame.get(l4 + 6..l4 + 8)? != [0, 0] => l4 + 6,
        _ => return None,
    };
    let at = u32::try_from(at).ok()?;
    (at <= MAX_L4_CSUM && frame.len() >= at as usize + 2).then_some(at)
}

fn ones_complement_sum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frame_has_a_valid_ipv4_checksum() {
        let f = udp_frame(
            [2; 6],
            [4; 6],
            Ipv4Addr::new(198, 18, 0, 1),
            Ipv4Addr::new(198, 18, 50, 2),
            (1234, 9),
            60,
        );
        assert_eq!(f.len(), 60);
        assert_eq!(ones_complement_sum(&f[14..34]), 0xffff);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 60 - 34);
        assert_eq!(l4_checksum_offset(&f), None, "UDP without a checksum");
    }

    #[test]
    fn udp6_frame_has_a_valid_checksum_and_is_found() {
        let (src, dst): (Ipv6Addr, Ipv6Addr) = (
            "2001:db8::1".parse().unwrap(),
            "2001:db8::2".parse().unwrap(),
        );
        let f = udp6_frame([2; 6], [4; 6], src, dst, (1234, 9), 80);
        assert_eq!(f.len(), 80);
        let mut pseudo = [src.octets(), dst.octets()].concat();
        pseudo.extend_from_slice(&26u32.to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 17]);
        pseudo.extend_from_slice(&f[54..]);
        assert_eq!(ones_complement_sum(&pseudo), 0xffff, "UDP checksum");
        assert_eq!(l4_checksum_offset(&f), Some(60));
    }

    #[test]
    fn tcp_syn_frame_has_valid_checksums_and_is_found() {
        let (src, dst) = (Ipv4Addr::new(198, 18, 0, 1), Ipv4Addr::new(198, 18, 50, 2));
        let f = tcp_syn_frame([2; 6], [4; 6], src, dst, (40000, 80), 64);
        assert_eq!(f.len(), 64);
        assert_eq!(ones_complement_sum(&f[14..34]), 0xffff);
        let mut pseudo = [src.octets(), dst.octets()].concat();
        pseudo.extend_from_slice(&[0, 6, 0, 20]);
        pseudo.extend_from_slice(&f[34..54]);
        assert_eq!(ones_complement_sum(&pseudo), 0xffff, "TCP checksum");
        assert_eq!(f[47], 0x02, "SYN only");
        assert_eq!(l4_checksum_offset(&f), Some(50));
    }
}
