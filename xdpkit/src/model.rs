//! Reference models: the outcome types each program's model gives
//! (`Program::model`) and what a chain of them decides
//! (`programs::chain_model`). Property tests compare them with the kernel
//! programs.

use xdpkit_common::XdpAction;

/// Ethernet header length; shorter frames cannot be bounced by `tx`.
pub const ETH_HLEN: usize = 14;

/// The verdict and output frame a program (or chain) should produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Verdict.
    pub verdict: XdpAction,
    /// The frame after the program.
    pub output: Vec<u8>,
}

/// What one stage decides: a verdict, or "next" (the stage after it decides).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// The frame's fate.
    Verdict(XdpAction),
    /// Hand the frame to the next stage; after the last stage, pass.
    Next,
}

/// One stage's decision and the frame as it leaves the stage.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StageOutcome {
    /// Verdict or next.
    pub decision: Decision,
    /// The frame after the stage.
    pub output: Vec<u8>,
}

impl StageOutcome {
    /// `decision` with the frame unchanged.
    pub fn same(decision: Decision, frame: &[u8]) -> StageOutcome {
        StageOutcome {
            decision,
            output: frame.to_vec(),
        }
    }

    /// A verdict with the frame unchanged.
    pub fn verdict(verdict: XdpAction, frame: &[u8]) -> StageOutcome {
        StageOutcome::same(Decision::Verdict(verdict), frame)
    }
}
