//! Shared argument groups and output helpers.

use std::io::Write as _;

use clap::ValueEnum;

/// `print!` through [`emit`]: a closed pipe ends xdpkit quietly.
macro_rules! out {
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!($($arg)*))
    };
}

/// `println!` through [`emit`]: a closed pipe ends xdpkit quietly.
macro_rules! outln {
    () => {
        $crate::output::emit(format_args!("\n"))
    };
    ($($arg:tt)*) => {
        $crate::output::emit(format_args!("{}\n", format_args!($($arg)*)))
    };
}

/// Writes to stdout. A reader that went away (`| head`) ends xdpkit with
/// exit code 0 and nothing on stderr, as ripgrep does; any other write
/// error ends it with exit code 1 (`println!` would panic on either).
pub fn emit(args: std::fmt::Arguments<'_>) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout.write_fmt(args).and_then(|()| stdout.flush()) {
        exit_on_write_error(&e);
    }
}

/// Ends the process for a failed stdout write: quietly with 0 for a closed
/// pipe, else with 1 and the error.
pub fn exit_on_write_error(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("xdpkit: error: cannot write the output: {e}");
    std::process::exit(1);
}

/// Whether `e` is a write into a closed pipe, somewhere in its chain.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
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
    outln!("{}", serde_json::to_string_pretty(value)?);
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

/// The firewall's policies, shared by every command that runs it. A flag
/// not given takes its default.
#[derive(Debug, Default, clap::Args)]
pub struct PolicyArgs {
    /// Verdict when no rule matches [default: allow].
    #[arg(long = "default", value_enum, value_name = "allow|deny")]
    pub default_policy: Option<AllowDeny>,
    /// Later IP fragments (no layer-4 header): allow, deny, or l3 (judged by
    /// rules without ports) [default: allow].
    #[arg(long, value_enum)]
    pub fragments: Option<FragmentsArg>,
    /// ARP, LLDP and other non-IP frames [default: allow].
    #[arg(long, value_enum, value_name = "allow|deny")]
    pub non_ip: Option<AllowDeny>,
    /// Truncated or inconsistent IP frames (cut headers, bad IHL or lengths) [default: deny].
    #[arg(long, value_enum, value_name = "allow|deny")]
    pub malformed: Option<AllowDeny>,
}

impl PolicyArgs {
    /// Whether any policy flag was given.
    pub fn any(&self) -> bool {
        self.default_policy.is_some()
            || self.fragments.is_some()
            || self.non_ip.is_some()
            || self.malformed.is_some()
    }

    /// The policy: given flags over the defaults.
    pub fn policy(&self) -> xdpkit::firewall::Policy {
        let base = xdpkit::firewall::Policy::default();
        xdpkit::firewall::Policy {
            default: self.default_policy.map_or(base.default, Into::into),
            fragments: match self.fragments {
                None => base.fragments,
                Some(FragmentsArg::Allow) => xdpkit::firewall::FragmentPolicy::Allow,
                Some(FragmentsArg::Deny) => xdpkit::firewall::FragmentPolicy::Deny,
                Some(FragmentsArg::L3) => xdpkit::firewall::FragmentPolicy::L3,
            },
            non_ip: self.non_ip.map_or(base.non_ip, Into::into),
            malformed: self.malformed.map_or(base.malformed, Into::into),
        }
    }
}
