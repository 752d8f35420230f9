//! `xdpkit export`

/// Print what runs as a host configuration file (the format `xdpkit apply`
/// reads): every interface xdpkit manages in this network namespace, its
/// mode, its stages in order and their settings (firewall policies and
/// rules, the redirect target, the balancer's VIPs, reals and sources).
///
/// `xdpkit export | xdpkit apply --dry-run -f -` shows no difference.
///
/// Examples:
///   xdpkit export > /etc/xdpkit/host.toml
///   xdpkit export | xdpkit apply --dry-run -f -
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    let running = xdpkit::apply::running()?;
    out!("{}", running.to_toml_string());
    Ok(())
}
