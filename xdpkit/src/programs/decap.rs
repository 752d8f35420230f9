//! `decap`: for the reals behind a `balancer`. Takes the outer IP header
//! off IPIP, IPv6-in-IPv4, IPv4-in-IPv6 and ip6ip6 frames (the outer IPv4
//! without options and not a fragment) and hands the inner packet on, to
//! the stack where the VIP sits on `lo`; other frames go on unchanged.
//! GUE frames (UDP to port 6080, Katran's, carrying an IP packet directly)
//! lose their outer IP and UDP headers the same way.

use xdpkit_common::balancer::{DecapOutcome, DECAP_OUTCOMES, GUE_PORT};

use super::{OutcomeCount, Program};
use crate::{
    model::{Decision, StageOutcome, ETH_HLEN},
    object::{embedded, Object},
    pins::PinDir,
};

/// The `decap` program.
pub struct Decap;

static PINS: [(&str, &str); 1] = [(DECAP_OUTCOMES, "decap_outcomes")];

impl Program for Decap {
    fn name(&self) -> &'static str {
        "decap"
    }

    fn about(&self) -> &'static str {
        "take the outer header off IPIP / ip6ip6 / GUE frames from a balancer, hand the inner packet on"
    }

    fn object(&self) -> Object {
        embedded!("decap")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_decap"
    }

    fn pinned_maps(&self) -> &'static [(&'static str, &'static str)] {
        &PINS
    }

    fn outcomes(&self, dir: &PinDir) -> Vec<OutcomeCount> {
        outcomes(dir).unwrap_or_default()
    }

    fn model(&self, frame: &[u8], _settings: &toml::Table) -> StageOutcome {
        let output = match outer(frame) {
            Some((len, inner_type, _)) => {
                let mut out = Vec::with_capacity(frame.len() - len);
                out.extend_from_slice(&frame[..12]);
                out.extend_from_slice(&inner_type.to_be_bytes());
                out.extend_from_slice(&frame[ETH_HLEN + len..]);
                out
            }
            None => frame.to_vec(),
        };
        StageOutcome {
            decision: Decision::Next,
            output,
        }
    }
}

/// The outer header's length, the inner EtherType and the kind, as the
/// program finds them.
pub fn outer(frame: &[u8]) -> Option<(usize, u16, DecapOutcome)> {
    let h = frame.get(..ETH_HLEN + 20)?;
    match u16::from_be_bytes([h[12], h[13]]) {
        0x0800 => {
            if h[14] != 0x45 || u16::from_be_bytes([h[20], h[21]]) & 0x3fff != 0 {
                return None;
            }
            match h[23] {
                4 => Some((20, 0x0800, DecapOutcome::Ipv4InIpv4)),
                41 => Some((20, 0x86dd, DecapOutcome::Ipv6InIpv4)),
                17 => gue(frame, 20),
                _ => None,
            }
        }
        0x86dd if frame.len() >= ETH_HLEN + 40 => match h[20] {
            4 => Some((40, 0x0800, DecapOutcome::Ipv4InIpv6)),
            41 => Some((40, 0x86dd, DecapOutcome::Ipv6InIpv6)),
            17 => gue(frame, 40),
            _ => None,
        },
        _ => None,
    }
}

/// GUE variant 1 after `ip` bytes of outer IP header: UDP to [`GUE_PORT`],
/// then an IP packet whose version says which.
fn gue(frame: &[u8], ip: usize) -> Option<(usize, u16, DecapOutcome)> {
    let u = frame.get(ETH_HLEN + ip..ETH_HLEN + ip + 9)?;
    if u16::from_be_bytes([u[2], u[3]]) != GUE_PORT {
        return None;
    }
    match u[8] >> 4 {
        4 => Some((ip + 8, 0x0800, DecapOutcome::GueIpv4)),
        6 => Some((ip + 8, 0x86dd, DecapOutcome::GueIpv6)),
        _ => None,
    }
}

/// Its frames by kind ([`DecapOutcome`] order).
const OUTCOME_NAMES: [&str; DecapOutcome::COUNT as usize] = [
    "plain",
    "ipv4_in_ipv4",
    "ipv6_in_ipv4",
    "ipv4_in_ipv6",
    "ipv6_in_ipv6",
    "failed",
    "gue_ipv4",
    "gue_ipv6",
];

fn outcomes(dir: &PinDir) -> Option<Vec<OutcomeCount>> {
    super::read_outcomes(dir, "decap_outcomes", &OUTCOME_NAMES)
}
