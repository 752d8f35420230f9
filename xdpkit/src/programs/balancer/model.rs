//! The reference model of the `balancer` program: which frames it
//! balances, which real each goes to, and the bytes it sends.

use std::collections::HashMap;

use xdpkit_common::{
    balancer::{
        encap_overhead, flow_hash, quic_server_id, FlowKey, FlowReal, LbConfig, LbOutcome, Real,
        VipKey, ENCAP_GUE, LB_NO_REAL, PROTO_TCP, PROTO_UDP, VIP_NO_FLOWS, VIP_QUIC,
    },
    XdpAction,
};

use super::tables::Tables;
use crate::model::{Decision, StageOutcome};

const ETH_HLEN: usize = 14;
const IPV4_HLEN: usize = 20;
const IPV6_HLEN: usize = 40;
const UDP_HLEN: usize = 8;
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
    df: bool,
    l4: usize,
}

fn parse(frame: &[u8]) -> Option<Frame> {
    let eth = frame.get(..ETH_HLEN)?;
    let mut key = FlowKey::default();
    let mut df = true;
    let (l4, ip_len, tos) = match u16::from_be_bytes([eth[12], eth[13]]) {
        0x0800 => {
            let ip = frame.get(ETH_HLEN..ETH_HLEN + IPV4_HLEN)?;
            if ip[0] != 0x45 || u16::from_be_bytes([ip[6], ip[7]]) & 0x3fff != 0 {
                return None;
            }
            key.proto = ip[9];
            df = ip[6] & 0x40 != 0;
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
        df,
        l4,
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
/// `frame`; `flows` changes as the program's would. No new-flow guard.
pub fn decide(t: &Tables, flows: &mut Flows, frame: &[u8]) -> LbDecision {
    decide_guarded(t, flows, &mut None, frame)
}

/// [`decide`] with the new-flow guard's room in the current second:
/// `Some(n)` lets `n` more flows into the table (and counts down), `None`
/// any number (the kernel's room is [`LbConfig::new_per_cpu`] per CPU per
/// second; the model's callers say what is left of it).
pub fn decide_guarded(
    t: &Tables,
    flows: &mut Flows,
    room: &mut Option<u64>,
    frame: &[u8],
) -> LbDecision {
    decide_with_rx_hash(t, flows, room, None, frame)
}

/// [`decide_guarded`] for a frame that arrives with the driver's RX hash
/// in its metadata area, as the RX-hash root leaves it (`rx_hash`): a new
/// flow is hashed with it unless [`LbConfig::tuple_hash_only`]; an
/// established flow keeps the hash its entry holds.
pub fn decide_with_rx_hash(
    t: &Tables,
    flows: &mut Flows,
    room: &mut Option<u64>,
    rx_hash: Option<u32>,
    frame: &[u8],
) -> LbDecision {
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
    let cfg = &t.config;
    let tuple_hash = hash_of(&f.key);
    let new_hash = match rx_hash {
        Some(h) if cfg.tuple_hash_only == 0 => h,
        _ => tuple_hash,
    };
    let use_flows = vip.flags & VIP_NO_FLOWS == 0;
    // As the program: the real is read once, and a flow whose real has
    // since been removed chooses again.
    let real_at = |i: u32| t.reals.get(i as usize).filter(|r| r.used != 0);
    let quic = if vip.flags & VIP_QUIC != 0 && f.key.proto == PROTO_UDP {
        frame
            .get(f.l4 + UDP_HLEN..f.l4 + UDP_HLEN + 10)
            .and_then(|p| quic_server_id(p.try_into().expect("10 bytes")))
            .and_then(|id| t.quic_ids.get(&id).copied())
            .and_then(|i| real_at(i).map(|r| (i, r)))
    } else {
        None
    };
    let known = if quic.is_some() || !use_flows || f.syn {
        None
    } else {
        flows
            .get(&f.key)
            .filter(|e| e.vip == vip.id)
            .and_then(|e| real_at(e.real).map(|r| (e.real, r, e.hash)))
    };
    let (index, real, how, hash) = match (quic, known) {
        (Some((i, real)), _) => (i, real, LbOutcome::QuicRouted, tuple_hash),
        (None, Some((i, real, hash))) => (i, real, LbOutcome::FlowHit, hash),
        (None, None) => {
            let hash = new_hash;
            if vip.ring_size == 0 {
                return drop(LbOutcome::NoReal);
            }
            let index = t.ring_slot(vip.ring_base.wrapping_add(hash % vip.ring_size));
            let Some(real) = real_at(index).filter(|_| index != LB_NO_REAL) else {
                return drop(LbOutcome::NoReal);
            };
            let mut how = LbOutcome::FlowMiss;
            if use_flows {
                if room.is_none_or(|n| n > 0) {
                    if let Some(n) = room.as_mut() {
                        *n -= 1;
                    }
                    flows.insert(
                        f.key,
                        FlowReal {
                            real: index,
                            vip: vip.id,
                            hash,
                        },
                    );
                } else {
                    how = LbOutcome::Guarded;
                }
            }
            (index, real, how, hash)
        }
    };
    let overhead = encap_overhead(cfg.encap, real.v6 != 0);
    if cfg.mtu != 0 && u32::from(f.ip_len) + u32::from(overhead) > u32::from(cfg.mtu) {
        let mtu = cfg.mtu.saturating_sub(overhead);
        return match (f.df, too_big(frame, &f, mtu)) {
            (true, Some(output)) => LbDecision {
                outcome: StageOutcome {
                    decision: Decision::Verdict(XdpAction::Tx),
                    output,
                },
                how: LbOutcome::TooBig,
                real: None,
            },
            _ => drop(LbOutcome::TooBig),
        };
    }
    let Some(output) = encapsulated(frame, &f, real, cfg, hash) else {
        return drop(LbOutcome::EncapFailed);
    };
    let action = if cfg.egress == 0 {
        XdpAction::Tx
    } else {
        XdpAction::Redirect
    };
    LbDecision {
        outcome: StageOutcome {
            decision: Decision::Verdict(action),
            output,
        },
        how,
        real: Some(index),
    }
}

/// `frame` with its Ethernet header replaced by a new one and an outer
/// header toward `real`, as the program writes them; `None` if the lengths
/// overflow.
fn encapsulated(
    frame: &[u8],
    f: &Frame,
    real: &Real,
    cfg: &LbConfig,
    hash: u32,
) -> Option<Vec<u8>> {
    let v6 = real.v6 != 0;
    let gue = cfg.encap == ENCAP_GUE;
    let l4_len = f
        .ip_len
        .checked_add(if gue { UDP_HLEN as u16 } else { 0 })?;
    let ip_len = l4_len.checked_add(if v6 { 0 } else { IPV4_HLEN as u16 })?;
    let mut dmac = cfg.gateway;
    if dmac == [0; 6] {
        dmac.copy_from_slice(&frame[6..12]);
    }
    let smac = if cfg.egress == 0 {
        &frame[..6]
    } else {
        &cfg.egress_mac[..]
    };
    let proto = if gue {
        17
    } else if f.key.v6 != 0 {
        41
    } else {
        4
    };
    let mut out = Vec::with_capacity(frame.len() + IPV6_HLEN + UDP_HLEN);
    out.extend_from_slice(&dmac);
    out.extend_from_slice(smac);
    if v6 {
        let label = hash & 0xf_ffff;
        out.extend_from_slice(&[0x86, 0xdd]);
        out.push(0x60 | (f.tos >> 4));
        out.push((f.tos << 4) | ((label >> 16) as u8 & 0x0f));
        out.push((label >> 8) as u8);
        out.push(label as u8);
        out.extend_from_slice(&ip_len.to_be_bytes());
        out.push(proto);
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
        ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
        ip[8] = OUTER_TTL;
        ip[9] = proto;
        ip[12..16].copy_from_slice(&src.to_be_bytes());
        ip[16..20].copy_from_slice(&real.addr[..4]);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&[0x08, 0x00]);
        out.extend_from_slice(&ip);
    }
    if gue {
        let sport = 0x8000 | (hash as u16 & 0x7fff);
        out.extend_from_slice(&sport.to_be_bytes());
        out.extend_from_slice(&cfg.gue_port.to_be_bytes());
        out.extend_from_slice(&l4_len.to_be_bytes());
        out.extend_from_slice(&[0, 0]);
    }
    out.extend_from_slice(&frame[ETH_HLEN..]);
    Some(out)
}

/// The ICMP "too big" reply to `frame` (from the VIP, back to the
/// sender), saying `mtu`: the frame's IP header and 8 bytes after it
/// quoted. `None` if the frame is too short to quote.
fn too_big(frame: &[u8], f: &Frame, mtu: u16) -> Option<Vec<u8>> {
    let v6 = f.key.v6 != 0;
    let ip_hlen = if v6 { IPV6_HLEN } else { IPV4_HLEN };
    let quote = frame.get(ETH_HLEN..ETH_HLEN + ip_hlen + 8)?;
    let mut out = Vec::with_capacity(ETH_HLEN + ip_hlen + 8 + quote.len());
    out.extend_from_slice(&frame[6..12]);
    out.extend_from_slice(&frame[..6]);
    let mut icmp = Vec::with_capacity(8 + quote.len());
    if v6 {
        icmp.extend_from_slice(&[2, 0, 0, 0]);
        icmp.extend_from_slice(&u32::from(mtu).to_be_bytes());
    } else {
        icmp.extend_from_slice(&[3, 4, 0, 0, 0, 0]);
        icmp.extend_from_slice(&mtu.to_be_bytes());
    }
    icmp.extend_from_slice(quote);
    if v6 {
        let len = icmp.len() as u16;
        let mut pseudo = Vec::with_capacity(40 + icmp.len());
        pseudo.extend_from_slice(&quote[24..40]);
        pseudo.extend_from_slice(&quote[8..24]);
        pseudo.extend_from_slice(&u32::from(len).to_be_bytes());
        pseudo.extend_from_slice(&[0, 0, 0, 58]);
        pseudo.extend_from_slice(&icmp);
        let sum = checksum(&pseudo);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&[0x86, 0xdd, 0x60, 0, 0, 0]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&[58, OUTER_TTL]);
        out.extend_from_slice(&quote[24..40]);
        out.extend_from_slice(&quote[8..24]);
    } else {
        let sum = checksum(&icmp);
        icmp[2..4].copy_from_slice(&sum.to_be_bytes());
        let mut ip = [0u8; IPV4_HLEN];
        ip[0] = 0x45;
        ip[2..4].copy_from_slice(&((IPV4_HLEN + icmp.len()) as u16).to_be_bytes());
        ip[8] = OUTER_TTL;
        ip[9] = 1;
        ip[12..16].copy_from_slice(&quote[16..20]);
        ip[16..20].copy_from_slice(&quote[12..16]);
        let sum = checksum(&ip);
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        out.extend_from_slice(&[0x08, 0x00]);
        out.extend_from_slice(&ip);
    }
    out.extend_from_slice(&icmp);
    Some(out)
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
