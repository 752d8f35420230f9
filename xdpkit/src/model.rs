//! Reference models: what each data-plane program should decide, in plain
//! Rust. Property tests compare them with the kernel programs.

use xdpkit_common::{ProgramKind, XdpAction};

/// Ethernet header length; shorter frames cannot be bounced by `tx`.
pub const ETH_HLEN: usize = 14;

/// The verdict and output frame a program should produce.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// Verdict.
    pub verdict: XdpAction,
    /// The frame after the program.
    pub output: Vec<u8>,
}

/// What `program` does with `frame`; `redirect_target` is whether the
/// redirect DEVMAP slot holds an interface.
pub fn expected(program: ProgramKind, frame: &[u8], redirect_target: bool) -> Expected {
    let same = |verdict| Expected {
        verdict,
        output: frame.to_vec(),
    };
    match program {
        ProgramKind::Pass => same(XdpAction::Pass),
        ProgramKind::Drop => same(XdpAction::Drop),
        ProgramKind::Redirect if redirect_target => same(XdpAction::Redirect),
        ProgramKind::Redirect => same(XdpAction::Pass),
        // Without a config every firewall policy is "pass" and there are
        // no rules (the rule semantics are `firewall::model`'s).
        ProgramKind::Firewall => same(XdpAction::Pass),
        ProgramKind::Tx if frame.len() < ETH_HLEN => same(XdpAction::Drop),
        ProgramKind::Tx => {
            let mut output = frame.to_vec();
            let (dst, src) = output.split_at_mut(6);
            dst.swap_with_slice(&mut src[..6]);
            Expected {
                verdict: XdpAction::Tx,
                output,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tx_swaps_only_the_macs() {
        let mut frame: Vec<u8> = (0u8..20).collect();
        let e = expected(ProgramKind::Tx, &frame, false);
        assert_eq!(e.verdict, XdpAction::Tx);
        assert_eq!(&e.output[..12], &[6, 7, 8, 9, 10, 11, 0, 1, 2, 3, 4, 5]);
        assert_eq!(&e.output[12..], &frame[12..]);
        frame.truncate(13);
        assert_eq!(
            expected(ProgramKind::Tx, &frame, false).verdict,
            XdpAction::Drop
        );
    }

    #[test]
    fn redirect_falls_back_to_pass_without_target() {
        assert_eq!(
            expected(ProgramKind::Redirect, &[0; 60], false).verdict,
            XdpAction::Pass
        );
        assert_eq!(
            expected(ProgramKind::Redirect, &[0; 60], true).verdict,
            XdpAction::Redirect
        );
    }
}
