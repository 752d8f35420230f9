//! `drop`: counts every frame and ends the chain with XDP_DROP.

use xdpkit_common::XdpAction;

use super::Program;
use crate::{
    model::StageOutcome,
    object::{embedded, Object},
};

/// The `drop` program.
pub struct Drop;

impl Program for Drop {
    fn name(&self) -> &'static str {
        "drop"
    }

    fn about(&self) -> &'static str {
        "count, then drop every frame"
    }

    fn object(&self) -> Object {
        embedded!("drop")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_drop"
    }

    fn model(&self, frame: &[u8], _settings: &toml::Table) -> StageOutcome {
        StageOutcome::verdict(XdpAction::Drop, frame)
    }
}
