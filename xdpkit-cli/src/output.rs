//! Shared argument groups and output helpers.

use clap::ValueEnum;
use serde::Serialize;

/// The interface a command acts on.
#[derive(Debug, clap::Args)]
pub struct DevArg {
    /// Network interface (as `ip link` names it), in the current network namespace.
    #[arg(short, long, value_name = "IF")]
    pub dev: String,
}

/// `--json`, shared by every command that reports something.
#[derive(Debug, Default, clap::Args)]
pub struct JsonArg {
    /// Print machine-readable JSON on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// XDP attach mode as typed on the command line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    /// Native if the driver supports it, else generic; the kernel decides.
    #[default]
    Auto,
    /// In the driver (fastest; needs driver support).
    Native,
    /// Generic XDP in the network stack (works everywhere, slower).
    Skb,
    /// On the NIC (needs a NIC that offloads BPF).
    Offload,
}

impl From<ModeArg> for xdpkit::Mode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => xdpkit::Mode::Auto,
            ModeArg::Native => xdpkit::Mode::Native,
            ModeArg::Skb => xdpkit::Mode::Skb,
            ModeArg::Offload => xdpkit::Mode::Offload,
        }
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// An error and its causes on one line, without repeating a cause that the
/// message already contains.
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line.replace('\n', " ")
}

/// `12.3 k`, `4.56 M`: rates the way xdp-bench prints them.
pub fn si(value: f64) -> String {
    match value {
        v if v >= 1e9 => format!("{:.2} G", v / 1e9),
        v if v >= 1e6 => format!("{:.2} M", v / 1e6),
        v if v >= 1e3 => format!("{:.1} k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn si_prefixes() {
        assert_eq!(si(0.0), "0");
        assert_eq!(si(999.0), "999");
        assert_eq!(si(12_345.0), "12.3 k");
        assert_eq!(si(4_560_000.0), "4.56 M");
    }

    #[test]
    fn one_line_skips_repeated_causes() {
        let e = anyhow::anyhow!("inner").context("outer: inner");
        assert_eq!(one_line(&e), "outer: inner");
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}

/// `allow` or `deny`, as the firewall's policy flags take them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum AllowDeny {
    /// Pass the frame.
    Allow,
    /// Drop the frame.
    Deny,
}

impl From<AllowDeny> for xdpkit::firewall::Verdict {
    fn from(v: AllowDeny) -> Self {
        match v {
            AllowDeny::Allow => xdpkit::firewall::Verdict::Pass,
            AllowDeny::Deny => xdpkit::firewall::Verdict::Drop,
        }
    }
}

/// How later IP fragments are judged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FragmentsArg {
    /// Pass every later fragment.
    Allow,
    /// Drop every later fragment.
    Deny,
    /// Judge them by rules without ports (rules with ports never match them).
    L3,
}

/// The firewall's policies, shared by every command that runs it.
#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Verdict when no rule matches.
    #[arg(long = "default", value_enum, default_value_t = AllowDeny::Allow, value_name = "allow|deny")]
    pub default_policy: AllowDeny,
    /// Later IP fragments (no layer-4 header): allow, deny, or l3 (match on layer-3 fields only).
    #[arg(long, value_enum, default_value_t = FragmentsArg::Allow)]
    pub fragments: FragmentsArg,
    /// ARP, LLDP and other non-IP frames.
    #[arg(long, value_enum, default_value_t = AllowDeny::Allow, value_name = "allow|deny")]
    pub non_ip: AllowDeny,
    /// Truncated or inconsistent IP frames (cut headers, bad IHL or lengths).
    #[arg(long, value_enum, default_value_t = AllowDeny::Deny, value_name = "allow|deny")]
    pub malformed: AllowDeny,
}

impl From<&PolicyArgs> for xdpkit::firewall::Policy {
    fn from(p: &PolicyArgs) -> Self {
        xdpkit::firewall::Policy {
            default: p.default_policy.into(),
            fragments: match p.fragments {
                FragmentsArg::Allow => xdpkit::firewall::FragmentPolicy::Allow,
                FragmentsArg::Deny => xdpkit::firewall::FragmentPolicy::Deny,
                FragmentsArg::L3 => xdpkit::firewall::FragmentPolicy::L3,
            },
            non_ip: p.non_ip.into(),
            malformed: p.malformed.into(),
        }
    }
}
