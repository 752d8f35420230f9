//! The firewall: rule grammar, ordered rulesets, the frame reading and the
//! reference model of its decision. The kernel program and its loader
//! follow the design in docs/firewall.md.

mod bulk;
pub mod capacity;
pub mod config;
pub mod dir;
pub mod error;
pub mod frame;
pub mod general;
pub mod kernel;
pub mod live;
pub mod maps;
pub mod model;
pub mod record;
pub mod rule;
pub mod ruleset;
pub mod simulate;
pub mod stage;
#[cfg(test)]
mod test_rng;
pub mod v6index;
pub mod v6tab;

pub use error::FirewallError;
pub use rule::{Action, PortRange, Rule, RuleError};
pub use ruleset::{Entry, FileError, Ruleset};
pub use stage::Firewall;

/// The firewall's name: as a program, a stage and its pin directory.
pub const NAME: &str = "firewall";

/// What happens to frames no rule decides.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Verdict {
    /// Pass.
    #[default]
    Pass,
    /// Drop.
    Drop,
}

/// How later IP fragments (no layer-4 header) are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FragmentPolicy {
    /// Pass every later fragment.
    #[default]
    Allow,
    /// Drop every later fragment.
    Deny,
    /// Judge them by the rules that need no layer-4 field (rules with ports never match).
    L3,
}

/// The firewall's policies (`xdpkit attach firewall --default .. --fragments ..`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Policy {
    /// When no rule matches.
    pub default: Verdict,
    /// Later fragments.
    pub fragments: FragmentPolicy,
    /// ARP, LLDP and anything else that is not IPv4/IPv6.
    pub non_ip: Verdict,
    /// Truncated or inconsistent IP frames.
    pub malformed: Verdict,
}

impl Default for Policy {
    /// Allow by default, allow fragments and non-IP, drop malformed frames.
    fn default() -> Policy {
        Policy {
            default: Verdict::Pass,
            fragments: FragmentPolicy::Allow,
            non_ip: Verdict::Pass,
            malformed: Verdict::Drop,
        }
    }
}
