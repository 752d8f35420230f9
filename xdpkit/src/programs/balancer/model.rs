//! The reference model of the `balancer` program: which frames it
//! balances, which real each goes to, and the bytes it sends.

use std::collections::HashMap;

use xdpkit_common::{
    balancer::{
        flow_hash, FlowKey, FlowReal, LbConfig, LbOutcome, Real, VipKey, LB_NO_REAL, PROTO_TCP,
        PROTO_UDP, VIP_NO_FLOWS,
    },
    XdpAction,
};

use super::tables::Tables;
use crate::model::{Decision, StageOutcome};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const OUTER_TTL: u8 = 64;

/// The flow table as the model keeps it (no eviction: tests stay far
/// below the map's size).
pub type Flows = HashMap<FlowKey, FlowReal>;

/// What the balancer does with one frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LbDecision {
    /// Next stage, drop or TX.
    pub outcome: StageOutcome,
    /// How it was decided.
    pub how: LbOutcome,
    /// The real it went to (TX only).
    pub real: Option<u32>,
}

/// A frame's flow as the program reads it: TCP/UDP over IPv4 without
/// options or fragmentation, or over IPv6 without extension headers.
struct Frame {
    key: FlowKey,
    syn: bool,
    ip_len: u16,
    tos: u8,
}

fn parse(frame: &[u8]) -> Option<Frame> {
    let eth = frame.get(..ETH_HLEN)?;
    let mut key = FlowKey::default();
    let (l4, ip_len, tos) = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => {
            let ip = frame.get(ETH_HLEN..ETH_HLEN + IPV4_HLEN)?;
            if ip[0] != 0x45 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            key.proto = ip[9];
            key.src[..4].copy_from_slice(&ip[12..16]);
            key.dst[..4].copy_from_slice(&ip[16..20]);
            (
                ETH_HLEN + IPV4_HLEN,
                u16::from_be_bytes([ip[2], ip[3]]),
                ip[1],
            )
        }
        0x86dd => {
            let ip = frame.get(ETH_HLEN..ETH_HLEN + IPV6_HLEN)?;
            key.proto = ip[6];
            key.v6 = 1;
            key.src.copy_from_slice(&ip[8..24]);
            key.dst.copy_from_slice(&ip[24..40]);
            let payload = u16::from_be_bytes([ip[4], ip[5]]);
            (
                ETH_HLEN + IPV6_HLEN,
                payload.checked_add(IPV6_HLEN as u16)?,
                (ip[0] << 4) | (ip[1] >> 4),
            )
        }
        _ => return None,
    };
    let mut syn = false;
    match key.proto {
        PROTO_TCP => {
            let tcp = frame.get(l4..l4 + 20)?;
            key.sport = u16::from_ne_bytes([tcp[0], tcp[1]]);
            key.dport = u16::from_ne_bytes([tcp[2], tcp[3]]);
            syn = tcp[13] & 0x12 == 0x02;
        }
        PROTO_UDP => {
            let udp = frame.get(l4..l4 + 8)?;
            key.sport = u16::from_ne_bytes([udp[0], udp[1]]);
            key.dport = u16::from_ne_bytes([udp[2], udp[3]]);
        }
        _ => return None,
    }
    Some(Frame {
        key,
        syn,
        ip_len,
        tos,
    })
}

fn halves(a: &[u8; 16]) -> (u64, u64) {
    let (hi, lo) = a.split_at(8);
    (
        u64::from_be_bytes(hi.try_into().expect("8 bytes")),
        u64::from_be_bytes(lo.try_into().expect("8 bytes")),
    )
}

/// The flow hash of `frame`'s flow, if the balancer reads one.
pub fn frame_hash(frame: &[u8]) -> Option<u32> {
    parse(frame).map(|f| hash_of(&f.key))
}

/// The flow of `frame`, if the balancer reads one.
pub fn frame_flow(frame: &[u8]) -> Option<FlowKey> {
    parse(frame).map(|f| f.key)
}

fn hash_of(key: &FlowKey) -> u32 {
    let ports = (u32::from(key.sport) << 16) | u32::from(key.dport);
    flow_hash(halves(&key.src), halves(&key.dst), ports, key.proto)
}

/// What the balancer with maps `t` and flow table `flows` does with
/// `frame`; `flows` changes as the program's would.
pub fn decide(t: &Tables, flows: &mut Flows, frame: &[u8]) -> LbDecision {
    let next = |how| LbDecision {
        outcome: StageOutcome::same(Decision::Next, frame),
        how,
        real: None,
    };
    let drop = |how| LbDecision {
        outcome: StageOutcome::verdict(XdpAction::Drop, frame),
        how,
        real: None,
    };
    let Some(f) = parse(frame) else {
        return next(LbOutcome::NotVip);
    };
    let key = VipKey {
        addr: f.key.dst,
        port: f.key.dport,
        proto: f.key.proto,
        v6: f.key.v6,
    };
    let Some(vip) = t.vips.get(&key) else {
        return next(LbOutcome::NotVip);
    };
    let hash = hash_of(&f.key);
    let use_flows = vip.flags & VIP_NO_FLOWS == 0;
    // As the program: the real is read once, and a flow whose real has
    // since been removed chooses again.
    let real_at = |i: u32| t.reals.get(i as usize).filter(|r| r.used != 0);
    let known = if use_flows && !f.syn {
        flows
            .get(&f.key)
            .filter(|e| e.vip == vip.id)
            .and_then(|e| real_at(e.real).map(|r| (e.real, r)))
    } else {
        None
    };
    let (index, real, how) = match known {
        Some((i, real)) => (i, real, LbOutcome::FlowHit),
        None => {
            if vip.ring_size == 0 {
                return drop(LbOutcome::NoReal);
            }
            let index = t.ring_slot(vip.ring_base.wrapping_add(hash % vip.ring_size));
            let Some(real) = real_at(index).filter(|_| index != LB_NO_REAL) else {
                return drop(LbOutcome::NoReal);
            };
            if use_flows {
                flows.insert(
                    f.key,
                    FlowReal {
                        real: index,
                        vip: vip.id,
                    },
                );
            }
            (index, real, LbOutcome::FlowMiss)
        }
    };
    // An IPv4 outer header cannot count a packet of more than 65,515 bytes.
    if real.v6 == 0 && f.ip_len.checked_add(IPV4_HLEN as u16).is_none() {
        return drop(LbOutcome::EncapFailed);
    }
    LbDecision {
        outcome: StageOutcome {
            decision: Decision::Verdict(XdpAction::Tx),
            output: encapsulated(frame, &f, real, &t.config, hash),
        },
        how,
        real: Some(index),
    }
}

/// `frame` with its Ethernet header replaced by a new one and an outer IP
/// header toward `real`, as the program writes them.
fn encapsulated(frame: &[u8], f: &Frame, real: &Real, cfg: &LbConfig, hash: u32) -> Vec<u8> {
    let mut dmac = cfg.gateway;
    if dmac == [0; 6] {
        dmac.copy_from_slice(&frame[6..12]);
    }
    let inner = if f.key.v6 != 0 { 41 } else { 4 };
    let mut out = Vec::with_capacity(frame.len() + IPV6_HLEN);
    out.extend_from_slice(&dmac);
    out.extend_from_slice(&frame[..6]);
    if real.v6 != 0 {
        let label = hash & 0xf_ffff;
        out.extend_from_slice(&[0x86, 0xdd]);
        out.push(0x60 | (f.tos >> 4));
        out.push((f.tos << 4) | ((label >> 16) as u8 & 0x0f));
        out.push((label >> 8) as u8);
        out.push(label as u8);
        out.extend_from_slice(&f.ip_len.to_be_bytes());
        out.push(inner);
        out.push(OUTER_TTL);
        out.extend_from_slice(&cfg.src6);
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&hash.to_be_bytes());
        out.extend_from_slice(&real.addr);
    } else {
        let bits = cfg.src4_bits.min(16);
        let host = if bits == 0 {
            0
        } else {
            hash & ((1 << bits) - 1)
        };
        let src = u32::from_be_bytes(cfg.src4.to_ne_bytes()) | host;
        let mut ip = [0u8; IPV4_HLEN];
        ip[0] = 0x45;
        ip[1] = f.tos;
        ip[2..4].copy_from_slice(&(f.ip_len + IPV4_HLEN as u16).to_be_bytes());
        ip[8] = OUTER_TTL;
        ip[9] = inner;
        ip[12..16].copy_from_slice(&src.to_be_bytes());
        ip[16..20].copy_from_slice(&real.addr[..4]);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&[0x08, 0x00]);
        out.extend_from_slice(&ip);
    }
    out.extend_from_slice(&frame[ETH_HLEN..]);
    out
}

/// The Internet checksum of `bytes` (even length).
pub fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
