//! `xdpkit`: attach, detach and observe XDP programs. A thin layer over the
//! `xdpkit` library: argument parsing, output and exit codes.

#[macro_use]
mod output;

mod apply;
mod attach;
mod bench;
mod detach;
mod doctor;
mod dump;
mod export;
mod exporter;
mod features;
mod fleet;
mod lb;
mod route;
mod rule;
mod signals;
mod simulate;
mod status;
mod top;
mod trafficgen;
mod xsk;

use std::process::ExitCode;

use clap::{error::ErrorKind, ArgAction, Parser, Subcommand};

/// XDP data-plane toolkit: attach xdpkit's XDP programs to interfaces and observe them.
///
/// Programs stay attached after xdpkit exits (a pinned bpf_link); their state
/// lives in /sys/fs/bpf/xdpkit/<ifname>/ and any later xdpkit process uses it.
/// Most commands need root (CAP_NET_ADMIN and CAP_BPF).
///
/// Exit status: 0 on success, 2 when the command or the system needs fixing
/// (bad arguments, unknown interface, missing privilege, unsupported mode,
/// another tool's program), 1 on any other failure. On failure nothing is
/// left changed.
#[derive(Debug, Parser)]
#[command(
    name = "xdpkit",
    version,
    infer_subcommands = true,
    max_term_width = 100
)]
pub struct Cli {
    /// More log output: -v info, -vv debug (aya's own messages one level quieter), -vvv trace.
    #[arg(short, long, action = ArgAction::Count, global = true)]
    verbose: u8,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    Agent(fleet::AgentArgs),
    Apply(apply::Args),
    Attach(attach::Args),
    Bench(bench::Args),
    Detach(detach::Args),
    Doctor(doctor::Args),
    Dump(dump::Args),
    Export(export::Args),
    Exporter(exporter::Args),
    Status(status::Args),
    Features(features::Args),
    Fleet(fleet::Args),
    Lb(lb::Args),
    Route(route::Args),
    Rule(rule::Args),
    Simulate(simulate::Args),
    Top(top::Args),
    Trafficgen(trafficgen::Args),
    Xsk(xsk::Args),
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return clap_error(&e),
    };
    init_logging(cli.verbose);
    let result = match cli.command {
        Command::Agent(args) => fleet::run_agent(args),
        Command::Apply(args) => apply::run(args),
        Command::Attach(args) => attach::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Detach(args) => detach::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Dump(args) => dump::run(args),
        Command::Export(args) => export::run(args),
        Command::Exporter(args) => exporter::run(args),
        Command::Status(args) => status::run(args),
        Command::Features(args) => features::run(args),
        Command::Fleet(args) => fleet::run(args),
        Command::Lb(args) => lb::run(args),
        Command::Route(args) => route::run(args),
        Command::Rule(args) => rule::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Top(args) => top::run(args),
        Command::Trafficgen(args) => trafficgen::run(args),
        Command::Xsk(args) => xsk::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // `xdpkit ... | head`: the reader has all it wanted.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xdpkit: error: {}", output::one_line(&e));
            ExitCode::from(exit_code(&e))
        }
    }
}

/// 2 when the user or the system must fix something (bad arguments or
/// input files, names, privileges, state: what the library calls usage
/// errors), 1 for faults of xdpkit and failed checks (`doctor`).
fn exit_code(e: &anyhow::Error) -> u8 {
    let usage = if e.downcast_ref::<doctor::DoctorFailed>().is_some() {
        false
    } else if let Some(e) = e.downcast_ref::<xdpkit::Error>() {
        e.is_usage()
    } else if let Some(e) = e.downcast_ref::<xdpkit::firewall::FirewallError>() {
        e.is_usage()
    } else if let Some(e) = e.downcast_ref::<xdpkit::fleet::FleetError>() {
        e.is_usage()
    } else {
        // Rule and rule-file errors, unreadable input files, bad values.
        true
    };
    if usage {
        2
    } else {
        1
    }
}

/// Help and version go to stdout as clap prints them; argument errors
/// become one line naming the problem and where to look, exit code 2.
fn clap_error(e: &clap::Error) -> ExitCode {
    if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
        // A closed pipe (`xdpkit --help | head -c 0`) is no error.
        let _ = e.print();
        return ExitCode::SUCCESS;
    }
    let rendered = e.render().to_string();
    // clap's first paragraph is the problem (it may list missing arguments
    // on following lines); a "tip:" or the possible values name the fix.
    let problem = rendered
        .split("\n\n")
        .next()
        .unwrap_or("invalid arguments")
        .lines()
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    let problem = problem.trim_start_matches("error: ").trim_end_matches(':');
    let tip = rendered
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("tip:") || l.starts_with("[possible values"))
        .map(|l| format!("; {l}"))
        .unwrap_or_default();
    eprintln!("xdpkit: error: {problem}{tip}; see `xdpkit --help`");
    ExitCode::from(2)
}

fn init_logging(verbose: u8) {
    let filter = match verbose {
        // netlink-packet-route warns about every attribute newer than itself.
        0 => "warn,netlink_packet_route=error",
        1 => "info,aya=warn,netlink_packet_route=error",
        2 => "debug,aya=info,netlink_packet_route=warn",
        _ => "trace",
    };
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_attach_with_every_option() {
        let cli = Cli::try_parse_from([
            "xdpkit", "attach", "redirect", "--dev", "veth0", "--mode", "skb", "--to", "veth1",
            "--force",
        ])
        .unwrap();
        let Command::Attach(args) = cli.command else {
            panic!("not attach")
        };
        assert_eq!(args.program, "redirect");
        assert_eq!(args.dev.dev, "veth0");
        assert_eq!(args.to.as_deref(), Some("veth1"));
        assert!(args.force);
    }

    #[test]
    fn rejects_unknown_mode_and_missing_dev() {
        assert!(
            Cli::try_parse_from(["xdpkit", "attach", "drop", "--dev", "x", "--mode", "fast"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["xdpkit", "attach", "drop"]).is_err());
        assert!(Cli::try_parse_from(["xdpkit", "detach"]).is_err());
    }

    #[test]
    fn exit_codes_follow_the_error_class() {
        use xdpkit::firewall::{FirewallError, RuleError};
        let cases: Vec<(anyhow::Error, u8)> = vec![
            (
                xdpkit::Error::UnknownInterface {
                    name: "eth9".into(),
                }
                .into(),
                2,
            ),
            (
                xdpkit::Error::from(FirewallError::NoFirewall {
                    iface: "veth0".into(),
                })
                .into(),
                2,
            ),
            (FirewallError::Rule(RuleError::Empty).into(), 2),
            (RuleError::Empty.into(), 2),
            (
                anyhow::Error::from(std::io::Error::from(std::io::ErrorKind::NotFound))
                    .context("cannot read rules.txt"),
                2,
            ),
            (
                xdpkit::Error::MissingMap {
                    name: "FW_CONFIG".into(),
                }
                .into(),
                1,
            ),
            (xdpkit::Error::Internal("x".into()).into(), 1),
            (
                anyhow::Error::from(xdpkit::Error::Internal("x".into()))
                    .context("simulation failed"),
                1,
            ),
        ];
        for (e, want) in cases {
            assert_eq!(exit_code(&e), want, "{e:#}");
        }
    }

    #[test]
    fn subcommands_can_be_abbreviated() {
        let cli = Cli::try_parse_from(["xdpkit", "stat", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Status(_)));
    }
}
