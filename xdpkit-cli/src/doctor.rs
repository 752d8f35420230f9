//! `xdpkit doctor`

use std::time::Duration;

use xdpkit::doctor::{self, Status};

use crate::output::{print_json, JsonArg};

/// Check this host, and with --dev an interface, for what makes XDP fail or
/// misbehave quietly; each check says what it found, why it matters and how
/// to fix it:
///
///   jit          the BPF JIT is on
///   bpffs        bpffs is mounted at /sys/fs/bpf (pinned programs and maps)
///   btf          the kernel has BTF
///   kernel       the kernel is new enough for each xdpkit feature
///   privileges   CAP_BPF and CAP_NET_ADMIN
///   mtu          the MTU fits native XDP (one page without multi-buffer)
///   program      which XDP program runs on the interface, and whose
///   mode         generic (skb) mode although the driver does native XDP
///   veth-peer    a veth whose peer has neither XDP nor GRO: frames sent
///                into it by XDP_TX or a redirect are silently dropped
///   exceptions   xdp:xdp_exception events during --watch seconds (aborted
///                verdicts, failed TX or redirects), host-wide
///
/// Exit status: 0 when nothing failed (warnings included), 1 when a check
/// failed, 2 for bad arguments.
///
/// Examples:
///   xdpkit doctor
///   xdpkit doctor --dev eth0 --watch 5
///   xdpkit doctor --dev veth0 --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Also check this interface.
    #[arg(short, long, value_name = "IF")]
    pub dev: Option<String>,

    /// Seconds to count XDP exceptions (0: do not watch).
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = parse_watch)]
    pub watch: f64,

    #[command(flatten)]
    pub json: JsonArg,
}

fn parse_watch(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.0..=3600.0).contains(&s) => Ok(s),
        _ => Err("expected seconds from 0 to 3600".to_string()),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let checks = doctor::run(args.dev.as_deref(), Duration::from_secs_f64(args.watch))?;
    let failed = checks.iter().any(|c| c.status == Status::Fail);
    if args.json.json {
        print_json(&checks)?;
    } else {
        for c in &checks {
            let mark = match c.status {
                Status::Ok => "ok",
                Status::Warn => "WARN",
                Status::Fail => "FAIL",
                Status::Skip => "skip",
            };
            outln!("{mark:>4}  {:<11} {}", c.name, c.detail);
            if let Some(fix) = &c.fix {
                outln!("      {:<11} fix: {fix}", "");
            }
        }
    }
    if failed {
        anyhow::bail!(DoctorFailed);
    }
    Ok(())
}

/// Exit status 1 without another message: the checks said it.
#[derive(Debug)]
pub struct DoctorFailed;

impl std::fmt::Display for DoctorFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a check failed (see above)")
    }
}

impl std::error::Error for DoctorFailed {}
