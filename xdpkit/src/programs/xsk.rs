//! `xsk`: every frame of the interface to the AF_XDP socket of its RX queue
//! ([`crate::xsk`]); frames of a queue without a socket go on down the chain.

use super::Program;
use crate::{
    model::{Decision, StageOutcome},
    object::{embedded, Object},
};

/// The `xsk` program.
pub struct Xsk;

impl Program for Xsk {
    fn name(&self) -> &'static str {
        "xsk"
    }

    fn about(&self) -> &'static str {
        "redirect every frame to the AF_XDP socket of its RX queue (`xdpkit xsk`); next if none"
    }

    fn object(&self) -> Object {
        embedded!("xsk")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_xsk"
    }

    /// Whether a socket is bound is state outside the frame and the
    /// settings: the model is the stage with no socket bound, where every
    /// frame goes on unchanged. (With a socket the kernel program
    /// redirects; tests/programs.rs checks both.)
    fn model(&self, frame: &[u8], _settings: &toml::Table) -> StageOutcome {
        StageOutcome::same(Decision::Next, frame)
    }
}
