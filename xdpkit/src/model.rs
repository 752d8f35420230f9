//! Reference models: what each data-plane program should decide, in plain
//! Rust (each program's [`Program::model`]), and what a chain of them
//! decides. Property tests compare them with the kernel programs.

use xdpkit_common::XdpAction;

use crate::programs::Program;

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

/// What a chain of stages (each with its settings) does with `frame`: the
/// first verdict wins; "next" after the last stage passes. Also returns
/// the index of the stage that gave the verdict (`stages.len()` when every
/// stage said next).
pub fn chain(stages: &[(&dyn Program, &toml::Table)], frame: &[u8]) -> (Expected, usize) {
    let mut frame = frame.to_vec();
    for (i, (program, settings)) in stages.iter().enumerate() {
        let out = program.model(&frame, settings);
        frame = out.output;
        if let Decision::Verdict(verdict) = out.decision {
            return (
                Expected {
                    verdict,
                    output: frame,
                },
                i,
            );
        }
    }
    (
        Expected {
            verdict: XdpAction::Pass,
            output: frame,
        },
        stages.len(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::programs::{count::Count, drop::Drop, pass::Pass, redirect::Redirect, tx::Tx};

    #[test]
    fn tx_swaps_only_the_macs() {
        let none = toml::Table::new();
        let mut frame: Vec<u8> = (0u8..20).collect();
        let e = Tx.model(&frame, &none);
        assert_eq!(e.decision, Decision::Verdict(XdpAction::Tx));
        assert_eq!(&e.output[..12], &[6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
        assert_eq!(&e.output[12..], &frame[12..]);
        frame.truncate(13);
        assert_eq!(
            Tx.model(&frame, &none).decision,
            Decision::Verdict(XdpAction::Drop)
        );
    }

    #[test]
    fn redirect_falls_back_to_pass_without_target() {
        let none = toml::Table::new();
        let mut to = toml::Table::new();
        to.insert("to".into(), "veth1".into());
        assert_eq!(
            Redirect.model(&[0; 60], &none).decision,
            Decision::Verdict(XdpAction::Pass)
        );
        assert_eq!(
            Redirect.model(&[0; 60], &to).decision,
            Decision::Verdict(XdpAction::Redirect)
        );
    }

    #[test]
    fn a_chain_ends_at_the_first_verdict_and_next_after_the_last_passes() {
        let none = toml::Table::new();
        let frame = [0u8; 60];
        let (e, at) = chain(&[(&Count, &none), (&Drop, &none), (&Pass, &none)], &frame);
        assert_eq!((e.verdict, at), (XdpAction::Drop, 1));
        let (e, at) = chain(&[(&Count, &none)], &frame);
        assert_eq!((e.verdict, at), (XdpAction::Pass, 1));
    }
}
