//! `xdpkit exporter`: the HTTP side; the counters and their OpenMetrics
//! text are `xdpkit::exporter`'s.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use xdpkit::exporter;

/// Where to listen when not told: loopback only, xdpkit's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9739";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head read; more is refused.
const MAX_REQUEST: usize = 8192;

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
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
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
    serve_on(&listener, args.rules_limit)
}

/// Serves `GET /metrics` on `listener` until the process ends, one request
/// at a time (Prometheus scrapes every few seconds).
fn serve_on(listener: &TcpListener, rules_limit: usize) -> anyhow::Result<()> {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, rules_limit) {
                    tracing::info!("exporter: request failed: {e}");
                }
            }
            Err(e) => tracing::warn!("exporter: accept failed: {e}"),
        }
    }
    Ok(())
}

fn answer(mut stream: TcpStream, rules_limit: usize) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_REQUEST {
            return respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                "text/plain",
                "too long\n",
            );
        }
    }
    let line = String::from_utf8_lossy(&head);
    let mut words = line.split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    match (method, path.split('?').next().unwrap_or("")) {
        ("GET", "/metrics") => match exporter::scrape(rules_limit) {
            Ok(text) => respond(&mut stream, "200 OK", CONTENT_TYPE, &text),
            Err(e) => respond(
                &mut stream,
                "500 Internal Server Error",
                "text/plain",
                &format!("{e}\n"),
            ),
        },
        ("GET", "/") => respond(
            &mut stream,
            "200 OK",
            "text/plain; charset=utf-8",
            "xdpkit exporter: metrics at /metrics\n",
        ),
        ("GET", _) => respond(
            &mut stream,
            "404 Not Found",
            "text/plain",
            "not found: try /metrics\n",
        ),
        _ => respond(
            &mut stream,
            "405 Method Not Allowed",
            "text/plain",
            "only GET\n",
        ),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> std::io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
