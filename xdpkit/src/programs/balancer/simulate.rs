//! `xdpkit lb simulate`: where frames would go, by the real balancer
//! program run with BPF_PROG_TEST_RUN on a copy of a balancer's tables.
//!
//! The program is loaded on its own with private maps ([`Alone`]), filled
//! with a snapshot of a running balancer's maps (settings, VIPs, reals,
//! rings in force and its flow table) or with the tables a declaration
//! builds. The live flow table is never written: a test run of the program
//! on the live maps would insert the simulated flows into it. Frames run in
//! order, so a simulated flow's first frame fills the private flow table
//! and its later frames find it, as on the wire.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, SocketAddr},
    str::FromStr,
};

use serde::Serialize;
use xdpkit_common::{
    balancer::{FlowKey, FlowReal, LbOutcome, PROTO_TCP, PROTO_UDP},
    XdpAction,
};

use super::{
    config::Declared,
    live, model,
    tables::{self, Tables},
    write_tables, Balancer,
};
use crate::{
    model::Decision,
    testrun::{Alone, TestRunOutcome},
    Error, Result,
};

/// Outcome names, in [`LbOutcome`] order (as `status` shows them).
const OUTCOMES: [&str; LbOutcome::COUNT as usize] = super::OUTCOME_NAMES;

/// A flow: `198.18.0.1:1234 -> 198.18.1.10:80/tcp` (IPv6 in brackets).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Flow {
    /// Client address and port.
    pub src: SocketAddr,
    /// Destination (a VIP or not) address and port.
    pub dst: SocketAddr,
    /// IP protocol: 6 or 17.
    pub proto: u8,
}

/// Text that is not a flow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a flow: write SRC:PORT -> DST:PORT/tcp|udp, e.g. 198.18.0.1:1234 -> 198.18.1.10:80/tcp (IPv6 in brackets)")]
pub struct BadFlow(pub String);

impl FromStr for Flow {
    type Err = BadFlow;

    fn from_str(text: &str) -> std::result::Result<Flow, BadFlow> {
        let bad = || BadFlow(text.to_string());
        let (src, rest) = text.split_once("->").ok_or_else(bad)?;
        let (dst, proto) = rest.trim().rsplit_once('/').ok_or_else(bad)?;
        let proto = match proto.to_ascii_lowercase().as_str() {
            "tcp" => PROTO_TCP,
            "udp" => PROTO_UDP,
            _ => return Err(bad()),
        };
        let src: SocketAddr = src.trim().parse().map_err(|_| bad())?;
        let dst: SocketAddr = dst.trim().parse().map_err(|_| bad())?;
        if src.is_ipv4() != dst.is_ipv4() {
            return Err(bad());
        }
        Ok(Flow { src, dst, proto })
    }
}

impl fmt::Display for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let proto = match self.proto {
            PROTO_TCP => "tcp".to_string(),
            PROTO_UDP => "udp".to_string(),
            p => p.to_string(),
        };
        write!(f, "{} -> {}/{proto}", self.src, self.dst)
    }
}

impl Serialize for Flow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

fn ip_of(bytes: &[u8; 16], v6: bool) -> IpAddr {
    if v6 {
        IpAddr::from(*bytes)
    } else {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    }
}

impl Flow {
    /// The flow of a frame the balancer reads (TCP or UDP over IPv4
    /// without options or fragmentation, or over IPv6).
    pub fn of_frame(frame: &[u8]) -> Option<Flow> {
        let key = model::frame_flow(frame)?;
        let v6 = key.v6 != 0;
        Some(Flow {
            src: SocketAddr::new(ip_of(&key.src, v6), u16::from_be(key.sport)),
            dst: SocketAddr::new(ip_of(&key.dst, v6), u16::from_be(key.dport)),
            proto: key.proto,
        })
    }

    /// A frame of this flow from `02:00:00:00:00:01` to
    /// `02:00:00:00:00:02`: a TCP segment (SYN if `syn`, else ACK) or a UDP
    /// datagram, with 32 bytes of payload.
    pub fn frame(&self, syn: bool) -> Vec<u8> {
        const PAYLOAD: usize = 32;
        let l4_len = if self.proto == PROTO_TCP { 20 } else { 8 } + PAYLOAD;
        let mut l4 = Vec::with_capacity(l4_len);
        l4.extend_from_slice(&self.src.port().to_be_bytes());
        l4.extend_from_slice(&self.dst.port().to_be_bytes());
        if self.proto == PROTO_TCP {
            l4.extend_from_slice(&1u32.to_be_bytes()); // sequence
            l4.extend_from_slice(&u32::from(!syn).to_be_bytes()); // acknowledgement
            l4.push(5 << 4); // data offset: 20 bytes
            l4.push(if syn { 0x02 } else { 0x10 });
            l4.extend_from_slice(&65535u16.to_be_bytes()); // window
            l4.extend_from_slice(&[0; 4]); // checksum (the balancer reads none), urgent
        } else {
            l4.extend_from_slice(&(l4_len as u16).to_be_bytes());
            l4.extend_from_slice(&[0; 2]);
        }
        l4.resize(l4_len, 0x5a);
        let mut out = vec![0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01];
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                out.extend_from_slice(&[0x08, 0x00]);
                let mut ip = [0u8; 20];
                ip[0] = 0x45;
                ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
                ip[8] = 64;
                ip[9] = self.proto;
                ip[12..16].copy_from_slice(&s.octets());
                ip[16..20].copy_from_slice(&d.octets());
                let sum = model::checksum(&ip);
                ip[10..12].copy_from_slice(&sum.to_be_bytes());
                out.extend_from_slice(&ip);
            }
            (s, d) => {
                let v6 = |a: IpAddr| match a {
                    IpAddr::V6(a) => a.octets(),
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                };
                out.extend_from_slice(&[0x86, 0xdd]);
                out.extend_from_slice(&[0x60, 0, 0, 0]);
                out.extend_from_slice(&(l4_len as u16).to_be_bytes());
                out.push(self.proto);
                out.push(64);
                out.extend_from_slice(&v6(s));
                out.extend_from_slice(&v6(d));
            }
        }
        out.extend_from_slice(&l4);
        out
    }
}

/// The outer header of an encapsulated frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Outer {
    /// Outer source (per flow).
    pub src: IpAddr,
    /// Outer destination: the real.
    pub dst: IpAddr,
    /// `ipip`, `ipv6-in-ipv4`, `ipv4-in-ipv6`, `ip6ip6`, or the outer
    /// protocol's number for another encapsulation.
    pub encap: String,
}

impl Outer {
    /// The outer header of `frame` as the balancer writes it, if it is one.
    pub fn of_frame(frame: &[u8]) -> Option<Outer> {
        let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
        let (src, dst, proto, v6) = match ethertype {
            0x0800 => {
                let ip = frame.get(14..34)?;
                let a = |at: usize| IpAddr::from([ip[at], ip[at + 1], ip[at + 2], ip[at + 3]]);
                (a(12), a(16), ip[9], false)
            }
            0x86dd => {
                let ip = frame.get(14..54)?;
                let a = |at: usize| {
                    let mut b = [0u8; 16];
                    b.copy_from_slice(&ip[at..at + 16]);
                    IpAddr::from(b)
                };
                (a(8), a(24), ip[6], true)
            }
            _ => return None,
        };
        let encap = match (v6, proto) {
            (false, 4) => "ipip".to_string(),
            (false, 41) => "ipv6-in-ipv4".to_string(),
            (true, 4) => "ipv4-in-ipv6".to_string(),
            (true, 41) => "ip6ip6".to_string(),
            (_, 17) => "udp".to_string(),
            (_, p) => p.to_string(),
        };
        Some(Outer { src, dst, encap })
    }
}

/// What the balancer did with one frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FrameResult {
    /// Its flow, if the balancer reads one.
    pub flow: Option<Flow>,
    /// `not_vip`, `flow_hit`, `flow_miss`, `no_real` or `encap_failed`.
    pub outcome: &'static str,
    /// `tx` (to a real), `drop`, or `next` (on down the chain).
    pub verdict: &'static str,
    /// The real it went to.
    pub real: Option<IpAddr>,
    /// The encapsulated frame's outer header.
    pub outer: Option<Outer>,
    /// Whether the reference model ([`model::decide`]) gives the same
    /// verdict and bytes.
    pub model_agrees: bool,
}

/// A balancer program with private maps holding a copy of a balancer's
/// tables, and the model beside it.
pub struct Simulator {
    alone: Alone,
    tables: Tables,
    flows: model::Flows,
    seen: Vec<u64>,
}

impl Simulator {
    /// A copy of the balancer running on `ifname`, its flow table included
    /// (flows established there are found).
    pub fn live(ifname: &str) -> Result<Simulator> {
        let (tables, flows) = live::snapshot(ifname)?;
        Simulator::with(tables, flows)
    }

    /// A balancer freshly made from declaration `d` (an `apply` file's):
    /// an empty flow table.
    pub fn declared(d: &Declared) -> Result<Simulator> {
        let tables =
            tables::build(d.config, &d.vips).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        Simulator::with(tables, Vec::new())
    }

    fn with(tables: Tables, flows: Vec<(FlowKey, FlowReal)>) -> Result<Simulator> {
        let mut alone = Alone::new(&Balancer)?;
        write_tables(alone.maps(), &tables)?;
        super::flows::write(alone.maps(), &flows)?;
        Ok(Simulator {
            alone,
            tables,
            flows: flows.into_iter().collect(),
            seen: vec![0; OUTCOMES.len()],
        })
    }

    /// The tables the program runs with.
    pub fn tables(&self) -> &Tables {
        &self.tables
    }

    /// Runs `frame` through the program (and the model).
    pub fn run(&mut self, frame: &[u8]) -> Result<FrameResult> {
        let got: TestRunOutcome = self.alone.run(frame, 1)?;
        let outcome = self.outcome()?;
        let want = model::decide(&self.tables, &mut self.flows, frame);
        let want_verdict = match want.outcome.decision {
            Decision::Verdict(v) => v,
            // Alone, "next" passes.
            Decision::Next => XdpAction::Pass,
        };
        let model_agrees = got.verdict == Some(want_verdict) && got.output == want.outcome.output;
        let (verdict, outer) = match got.verdict {
            Some(XdpAction::Tx) => ("tx", Outer::of_frame(&got.output)),
            Some(XdpAction::Drop) => ("drop", None),
            Some(XdpAction::Pass) => ("next", None),
            Some(XdpAction::Aborted) => ("aborted", None),
            Some(XdpAction::Redirect) => ("redirect", None),
            None => ("unknown", None),
        };
        Ok(FrameResult {
            flow: Flow::of_frame(frame),
            outcome,
            verdict,
            real: outer.as_ref().map(|o| o.dst),
            outer,
            model_agrees,
        })
    }

    /// The outcome counter the last run moved.
    fn outcome(&mut self) -> Result<&'static str> {
        let now: Vec<u64> = super::counters::read(self.alone.maps())?
            .iter()
            .map(|c| c.packets)
            .collect();
        let moved = now
            .iter()
            .zip(&self.seen)
            .position(|(n, s)| n != s)
            .map_or("unknown", |i| OUTCOMES[i]);
        self.seen = now;
        Ok(moved)
    }
}

/// The frames of one flow and where they went.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FlowResult {
    /// The flow; `None` for frames the balancer reads no flow from.
    pub flow: Option<Flow>,
    /// Its frames.
    pub packets: u64,
    /// The reals they went to, in order of first use (one, unless a real
    /// was drained by the ring and a later SYN chose again).
    pub reals: Vec<IpAddr>,
    /// Frames by outcome.
    pub outcomes: BTreeMap<&'static str, u64>,
    /// Frames by verdict.
    pub verdicts: BTreeMap<&'static str, u64>,
    /// The outer header of its first encapsulated frame.
    pub outer: Option<Outer>,
    /// Frames on which the model disagreed with the program.
    pub model_disagrees: u64,
}

/// Results grouped by flow, flows in order of first frame.
pub fn by_flow(results: &[FrameResult]) -> Vec<FlowResult> {
    let mut out: Vec<FlowResult> = Vec::new();
    let mut index: std::collections::HashMap<Option<Flow>, usize> = Default::default();
    for r in results {
        let at = *index.entry(r.flow).or_insert_with(|| {
            out.push(FlowResult {
                flow: r.flow,
                packets: 0,
                reals: Vec::new(),
                outcomes: BTreeMap::new(),
                verdicts: BTreeMap::new(),
                outer: None,
                model_disagrees: 0,
            });
            out.len() - 1
        });
        let f = &mut out[at];
        f.packets += 1;
        if let Some(real) = r.real {
            if !f.reals.contains(&real) {
                f.reals.push(real);
            }
        }
        *f.outcomes.entry(r.outcome).or_default() += 1;
        *f.verdicts.entry(r.verdict).or_default() += 1;
        if f.outer.is_none() {
            f.outer = r.outer.clone();
        }
        f.model_disagrees += u64::from(!r.model_agrees);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_parse_print_and_frame() {
        for text in [
            "198.18.0.1:1234 -> 198.18.1.10:80/tcp",
            "[2001:db8::1]:5353 -> [2001:db8:1::10]:53/udp",
        ] {
            let flow: Flow = text.parse().unwrap();
            assert_eq!(flow.to_string(), text);
            for syn in [false, true] {
                assert_eq!(Flow::of_frame(&flow.frame(syn)), Some(flow), "{text}");
            }
        }
        assert_eq!(
            "198.18.0.1:1234->198.18.1.10:80/UDP"
                .parse::<Flow>()
                .unwrap()
                .proto,
            PROTO_UDP
        );
        for bad in [
            "198.18.0.1:1234 -> 198.18.1.10:80",
            "198.18.0.1 -> 198.18.1.10:80/tcp",
            "198.18.0.1:1234 -> [2001:db8::1]:80/tcp",
            "198.18.0.1:1234 198.18.1.10:80/tcp",
            "198.18.0.1:1234 -> 198.18.1.10:80/icmp",
        ] {
            let e = bad.parse::<Flow>().unwrap_err().to_string();
            assert!(e.contains("is not a flow"), "{bad}: {e}");
        }
    }

    #[test]
    fn a_flows_frames_are_grouped() {
        let flow: Flow = "198.18.0.1:1234 -> 198.18.1.10:80/tcp".parse().unwrap();
        let real: IpAddr = "198.18.2.1".parse().unwrap();
        let frame = |outcome| FrameResult {
            flow: Some(flow),
            outcome,
            verdict: "tx",
            real: Some(real),
            outer: None,
            model_agrees: true,
        };
        let mut other = frame("not_vip");
        other.flow = None;
        let grouped = by_flow(&[
            frame("flow_miss"),
            other,
            frame("flow_hit"),
            frame("flow_hit"),
        ]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[0].packets, 3);
        assert_eq!(grouped[0].reals, [real]);
        assert_eq!(grouped[0].outcomes["flow_hit"], 2);
        assert_eq!(grouped[1].flow, None);
    }
}
