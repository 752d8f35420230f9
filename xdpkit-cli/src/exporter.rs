//! `xdpkit exporter`

use std::net::SocketAddr;

use xdpkit::exporter;

/// Serve xdpkit's counters to Prometheus: `GET /metrics` returns, read at
/// that moment from the pinned maps of every interface xdpkit manages in
/// this network namespace, the OpenMetrics text format with HELP and TYPE:
///
///   xdpkit_xdp_packets_total, xdpkit_xdp_bytes_total
///       {interface, program, action}: frames (bytes) per XDP verdict
///   xdpkit_firewall_outcome_packets_total, xdpkit_firewall_outcome_bytes_total
///       {interface, outcome}: rule, rate_limited, default, non_ip, fragment, malformed
///   xdpkit_firewall_rule_packets_total, xdpkit_firewall_rule_bytes_total,
///   xdpkit_firewall_rule_limited_packets_total
///       {interface, rule_id, rule}: the --rules-limit rules with most packets
///
/// Listens on loopback unless told otherwise; serves until stopped. A scrape
/// of a firewall with a million rules reads all their counters (seconds).
///
/// Examples:
///   xdpkit exporter
///   xdpkit exporter --listen 0.0.0.0:9739 --rules-limit 1000
///   xdpkit exporter --once
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Address and port to serve on.
    #[arg(long, value_name = "ADDR:PORT", default_value = exporter::DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// Most firewall rules exported per interface (those with most packets).
    #[arg(long, value_name = "N", default_value_t = 100)]
    pub rules_limit: usize,

    /// Print one scrape on stdout and exit, without serving.
    #[arg(long)]
    pub once: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    xdpkit::privilege::require("exporting counters")?;
    if args.once {
        out!("{}", exporter::scrape(args.rules_limit)?);
        return Ok(());
    }
    let listener = std::net::TcpListener::bind(args.listen).map_err(|e| {
        xdpkit::Error::InvalidArgument(format!("cannot listen on {}: {e}", args.listen))
    })?;
    if !args.listen.ip().is_loopback() {
        tracing::warn!(
            "serving on {}, reachable beyond this host: counters and rules are visible to anyone who can connect",
            args.listen
        );
    }
    eprintln!("xdpkit exporter: serving http://{}/metrics", args.listen);
    exporter::serve_on(&listener, args.rules_limit)?;
    Ok(())
}
