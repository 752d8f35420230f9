//! `tx`: swaps the MAC addresses and bounces the frame out of the interface
//! it came in on (XDP_TX).

use xdpkit_common::XdpAction;

use super::Program;
use crate::{
    model::{StageOutcome, ETH_HLEN},
    object::{embedded, Object},
};

/// The `tx` program.
pub struct Tx;

impl Program for Tx {
    fn name(&self) -> &'static str {
        "tx"
    }

    fn about(&self) -> &'static str {
        "swap the MAC addresses and send every frame back out (XDP_TX)"
    }

    fn object(&self) -> Object {
        embedded!("tx")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_tx"
    }

    fn model(&self, frame: &[u8], _settings: &toml::Table) -> StageOutcome {
        if frame.len() < ETH_HLEN {
            return StageOutcome::verdict(XdpAction::Drop, frame);
        }
        let mut output = frame.to_vec();
        let (dst, src) = output.split_at_mut(6);
        dst.swap_with_slice(&mut src[..6]);
        StageOutcome {
            decision: crate::model::Decision::Verdict(XdpAction::Tx),
            output,
        }
    }
}
