//! `pass`: counts every frame and ends the chain with XDP_PASS.

use xdpkit_common::XdpAction;

use super::Program;
use crate::{
    model::StageOutcome,
    object::{embedded, Object},
};

/// The `pass` program.
pub struct Pass;

impl Program for Pass {
    fn name(&self) -> &'static str {
        "pass"
    }

    fn about(&self) -> &'static str {
        "count, then hand every frame to the network stack"
    }

    fn object(&self) -> Object {
        embedded!("pass")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_pass"
    }

    fn model(&self, frame: &[u8], _settings: &toml::Table) -> StageOutcome {
        StageOutcome::verdict(XdpAction::Pass, frame)
    }
}
