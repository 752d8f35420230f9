//! `xdpkit simulate`: each packet of a capture through the real firewall
//! program (BPF_PROG_TEST_RUN, private maps, nothing attached).

use std::{fs::File, io::BufReader, path::Path};

use pcap_file::{
    pcap::PcapReader,
    pcapng::{Block, PcapNgReader},
    DataLink,
};
use serde::Serialize;
use xdpkit_common::firewall::{Outcome, NO_RULE};

use super::{kernel::FirewallHarness, Policy, Ruleset, Verdict};
use crate::{Error, Result, XdpAction};

/// Shortest frame BPF_PROG_TEST_RUN accepts (an Ethernet header).
const MIN_FRAME: usize = 14;

/// The firewall's decision on one captured packet.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SimulatedPacket {
    /// 1-based position in the capture.
    pub index: usize,
    /// `pass`, `drop` or `to-userspace` (a `to-userspace` rule decided: the
    /// frame goes into the AF_XDP socket of its RX queue if one is bound,
    /// else on down the chain like `pass`; the simulation binds none, and
    /// its program handed the frame on).
    pub verdict: &'static str,
    /// The deciding rule's id (its line in the rule file), if a rule decided.
    pub rule: Option<u32>,
}

fn capture_error(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::InvalidArgument(format!("{}: {what}", path.display()))
}

/// The Ethernet frames of a pcap or pcapng file, in order.
///
/// # Errors
///
/// A missing or unreadable file, a format that is neither, or a link type
/// other than Ethernet.
pub fn read_capture(path: &Path) -> Result<Vec<Vec<u8>>> {
    let open = || {
        File::open(path)
            .map(BufReader::new)
            .map_err(|e| capture_error(path, format!("cannot open ({e})")))
    };
    let mut magic = [0u8; 4];
    std::io::Read::read_exact(&mut open()?, &mut magic)
        .map_err(|_| capture_error(path, "too short to be a capture"))?;
    let mut frames = Vec::new();
    if magic == [0x0a, 0x0d, 0x0d, 0x0a] {
        let mut reader = PcapNgReader::new(open()?)
            .map_err(|e| capture_error(path, format!("not a pcapng file ({e})")))?;
        while let Some(block) = reader.next_block() {
            let block = block
                .map_err(|e| capture_error(path, format!("packet {}: {e}", frames.len() + 1)))?;
            let data = match block {
                Block::InterfaceDescription(idb) if idb.linktype != DataLink::ETHERNET => {
                    return Err(capture_error(
                        path,
                        format!("link type {:?} is not Ethernet", idb.linktype),
                    ));
                }
                Block::EnhancedPacket(p) => p.data.into_owned(),
                Block::SimplePacket(p) => p.data.into_owned(),
                Block::Packet(p) => p.data.into_owned(),
                _ => continue,
            };
            frames.push(data);
        }
    } else {
        let mut reader = PcapReader::new(open()?)
            .map_err(|e| capture_error(path, format!("not a pcap or pcapng file ({e})")))?;
        let linktype = reader.header().datalink;
        if linktype != DataLink::ETHERNET {
            return Err(capture_error(
                path,
                format!("link type {linktype:?} is not Ethernet"),
            ));
        }
        while let Some(packet) = reader.next_packet() {
            let packet = packet
                .map_err(|e| capture_error(path, format!("packet {}: {e}", frames.len() + 1)))?;
            frames.push(packet.data.into_owned());
        }
    }
    Ok(frames)
}

/// Judges every frame with `rules` and `policy` in a private firewall.
/// Frames shorter than an Ethernet header (which no NIC delivers, and
/// BPF_PROG_TEST_RUN refuses) get the malformed policy.
pub fn simulate(
    rules: &Ruleset,
    policy: Policy,
    frames: &[Vec<u8>],
) -> Result<Vec<SimulatedPacket>> {
    let mut harness = FirewallHarness::new(policy)?;
    harness.load_rules(rules)?;
    frames
        .iter()
        .enumerate()
        .map(|(i, frame)| {
            let index = i + 1;
            if frame.len() < MIN_FRAME {
                let verdict = if policy.malformed == Verdict::Drop {
                    "drop"
                } else {
                    "pass"
                };
                return Ok(SimulatedPacket {
                    index,
                    verdict,
                    rule: None,
                });
            }
            let (out, trace) = harness.run(frame).map_err(|e| Error::Simulation {
                index,
                source: Box::new(e),
            })?;
            let verdict = match out.verdict {
                Some(XdpAction::Drop) => "drop",
                _ if trace.outcome == Outcome::NoSocket as u32 => "to-userspace",
                _ => "pass",
            };
            Ok(SimulatedPacket {
                index,
                verdict,
                rule: (trace.rule != NO_RULE).then_some(trace.rule),
            })
        })
        .collect()
}
