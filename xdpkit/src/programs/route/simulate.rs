//! `xdpkit route simulate`: frames through the real `route` program with
//! BPF_PROG_TEST_RUN, as if they arrived on an interface: where each would
//! go (egress interface, next hop and its MAC) or why the stack would get
//! it. The FIB lookup is the kernel's, in the network namespace of the
//! calling process; the program is loaded privately (nothing is attached,
//! no counter of a running stage moves) with its trace switched on.

use std::{collections::BTreeSet, net::IpAddr};

use aya::{
    maps::{Array, DevMapHash, MapData},
    programs::{TestRun as _, TestRunOptions},
    Ebpf,
};
use serde::Serialize;
use xdpkit_common::{
    route::{RouteOutcome, RouteTrace, ROUTE_PORTS, ROUTE_TRACE, ROUTE_TRACE_ON},
    XdpAction,
};

use super::{error::RouteError, live, Route};
use crate::{
    iface,
    maps::map_err,
    object::{self, missing_map},
    pins::PinDir,
    privilege,
    programs::Program as _,
    Error, Result,
};

/// One frame's fate.
#[derive(Clone, Debug, Serialize)]
pub struct Simulated {
    /// The frame's index (0-based).
    pub index: usize,
    /// `forwarded` or why the frame goes to the stack (the counter names).
    pub outcome: &'static str,
    /// The program's verdict: `redirect`, or `pass` (to the next stage or
    /// the stack).
    pub verdict: &'static str,
    /// The FIB's egress interface, when it answered with one.
    pub egress: Option<String>,
    /// The next hop (the gateway, or the destination on a link route).
    pub next_hop: Option<IpAddr>,
    /// The next hop's MAC, when known.
    pub next_hop_mac: Option<String>,
    /// The egress MTU, when the frame was too big for it.
    pub mtu: Option<u32>,
    /// TTL or hop limit before and after, for a forwarded frame.
    pub ttl: Option<(u8, u8)>,
    /// The frame as the program left it.
    #[serde(skip)]
    pub output: Vec<u8>,
}

/// The `route` program loaded for simulation.
pub struct Simulator {
    ebpf: Ebpf,
    ingress: u32,
}

impl Simulator {
    /// Frames arriving on `ingress`, sent out of `ports` (names).
    pub fn new(ingress: &str, ports: &[String]) -> Result<Simulator> {
        privilege::require("route simulate")?;
        let ingress_index = iface::index(ingress)?;
        let indexes = ports
            .iter()
            .map(|p| iface::index(p))
            .collect::<Result<BTreeSet<u32>>>()?;
        let mut ebpf = Route.object().load_with(&[], &[(ROUTE_TRACE_ON, 1)])?;
        object::program(&mut ebpf, Route.symbol(), Route.name())?;
        let map = ebpf
            .map_mut(ROUTE_PORTS)
            .ok_or_else(|| missing_map(ROUTE_PORTS))?;
        let mut map: DevMapHash<&mut MapData> =
            DevMapHash::try_from(map).map_err(map_err("open ROUTE_PORTS"))?;
        for i in indexes {
            super::insert_port(&mut map, i)?;
        }
        Ok(Simulator {
            ebpf,
            ingress: ingress_index,
        })
    }

    /// Frames arriving on `ifname`, with the ports of the route stage
    /// running there.
    pub fn for_running(ifname: &str) -> Result<Simulator> {
        iface::validate_name(ifname)?;
        let dir = PinDir::new(ifname)?.stage(Route.name());
        if !dir.file(super::PORTS_PIN).exists() {
            iface::index(ifname)?;
            return Err(RouteError::NotEnabled {
                iface: ifname.to_string(),
            }
            .into());
        }
        let ports = live::port_names(&dir)?;
        Simulator::new(ifname, &ports)
    }

    /// Runs one frame.
    pub fn run(&mut self, index: usize, frame: &[u8]) -> Result<Simulated> {
        if frame.len() < crate::model::ETH_HLEN {
            return Err(Error::Simulation {
                index,
                source: Box::new(Error::InvalidArgument(format!(
                    "{} bytes: shorter than an Ethernet header",
                    frame.len()
                ))),
            });
        }
        let program = object::program(&mut self.ebpf, Route.symbol(), Route.name())?;
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let md: [u32; 6] = [0, frame.len() as u32, 0, self.ingress, 0, 0];
        let ctx: Vec<u8> = md.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mut output = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut output);
        opts.ctx_in = Some(&ctx);
        let result = program.test_run(opts).map_err(|source| Error::TestRun {
            program: "route",
            source,
        })?;
        output.truncate(result.data_size_out as usize);
        let trace = self.trace()?;
        let outcome = RouteOutcome::ALL
            .get(trace.outcome as usize)
            .copied()
            .unwrap_or(RouteOutcome::Other);
        let verdict = match XdpAction::from_u32(result.return_value) {
            Some(XdpAction::Redirect) => "redirect",
            Some(XdpAction::Pass) => "pass",
            Some(XdpAction::Drop) => "drop",
            Some(XdpAction::Tx) => "tx",
            _ => "aborted",
        };
        let answered = trace.looked_up != 0
            && matches!(
                outcome,
                RouteOutcome::Forwarded | RouteOutcome::NoNeighbour | RouteOutcome::NotPort
            );
        let next_hop = answered.then(|| next_hop(&trace));
        let ttl_at = match trace.family {
            2 => Some(crate::model::ETH_HLEN + 8),
            10 => Some(crate::model::ETH_HLEN + 7),
            _ => None,
        };
        let ttl = match (outcome, ttl_at) {
            (RouteOutcome::Forwarded, Some(at)) => frame.get(at).zip(output.get(at)),
            _ => None,
        }
        .map(|(a, b)| (*a, *b));
        Ok(Simulated {
            index,
            outcome: outcome.name(),
            verdict,
            egress: answered.then(|| {
                iface::name(trace.ifindex).unwrap_or_else(|| format!("#{}", trace.ifindex))
            }),
            next_hop,
            next_hop_mac: (answered && outcome != RouteOutcome::NoNeighbour)
                .then(|| mac(&trace.dmac)),
            mtu: (outcome == RouteOutcome::TooBig).then_some(trace.mtu),
            ttl,
            output,
        })
    }

    fn trace(&self) -> Result<RouteTrace> {
        let map = self
            .ebpf
            .map(ROUTE_TRACE)
            .ok_or_else(|| missing_map(ROUTE_TRACE))?;
        let array: Array<&MapData, RouteTrace> =
            Array::try_from(map).map_err(map_err("open ROUTE_TRACE"))?;
        array.get(&0, 0).map_err(map_err("read ROUTE_TRACE"))
    }
}

fn next_hop(t: &RouteTrace) -> IpAddr {
    if t.family == 2 {
        IpAddr::from([t.next_hop[0], t.next_hop[1], t.next_hop[2], t.next_hop[3]])
    } else {
        IpAddr::from(t.next_hop)
    }
}

fn mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A frame described on the command line.
#[derive(Clone, Debug)]
pub struct FrameSpec {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// `udp`, `tcp` or `icmp`.
    pub proto: String,
    /// TTL or hop limit.
    pub ttl: u8,
    /// Payload bytes.
    pub payload: usize,
    /// Destination MAC (the ingress interface's when `None`).
    pub dst_mac: Option<[u8; 6]>,
}

/// Builds the frame of `spec` as it would arrive on `ingress` (sent to
/// that interface's MAC unless the spec names one).
pub fn build_frame(spec: &FrameSpec, ingress: &str) -> Result<Vec<u8>> {
    use etherparse::PacketBuilder;
    let bad = |m: String| Error::from(RouteError::BadFrame(m));
    let dst_mac = match spec.dst_mac {
        Some(m) => m,
        None => {
            let index = iface::index(ingress)?;
            crate::netlink::mac_address(index)?.unwrap_or([2, 0, 0, 0, 0, 2])
        }
    };
    let src_mac = [0x02, 0, 0, 0, 0, 0x01];
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (spec.src, spec.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), spec.ttl),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), spec.ttl),
        _ => {
            return Err(bad(format!(
                "--src {} and --dst {} are of different families",
                spec.src, spec.dst
            )))
        }
    };
    let payload = vec![0u8; spec.payload];
    let mut frame = Vec::new();
    let written = match spec.proto.as_str() {
        "udp" => ip.udp(40000, 9).write(&mut frame, &payload),
        "tcp" => ip
            .tcp(40000, 80, 1, 65535)
            .syn()
            .write(&mut frame, &payload),
        "icmp" if spec.src.is_ipv4() => ip.icmpv4_echo_request(1, 1).write(&mut frame, &payload),
        "icmp" => ip.icmpv6_echo_request(1, 1).write(&mut frame, &payload),
        other => {
            return Err(bad(format!(
                "--proto {other}: choose one of udp, tcp, icmp"
            )))
        }
    };
    written.map_err(|e| bad(format!("cannot build the frame: {e}")))?;
    Ok(frame)
}
