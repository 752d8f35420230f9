//! `count`: a tap between stages; counts what reaches it and hands it on.

use super::Program;
use crate::{
    model::{Decision, StageOutcome},
    object::{embedded, Object},
};

/// The `count` program.
pub struct Count;

impl Program for Count {
    fn name(&self) -> &'static str {
        "count"
    }

    fn about(&self) -> &'static str {
        "count what reaches this stage and hand it to the next (pass if last)"
    }

    fn object(&self) -> Object {
        embedded!("count")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_count"
    }

    fn model(&self, frame: &[u8], _settings: &toml::Table) -> StageOutcome {
        StageOutcome::same(Decision::Next, frame)
    }
}
