//! A Prometheus exporter: on each scrape, the counters of every interface
//! xdpkit manages in this network namespace (per action, per firewall
//! outcome, per firewall rule), read from the pinned maps and written in
//! the OpenMetrics text format by the prometheus-client crate.

use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::counter::ConstCounter,
    registry::Registry,
};

use crate::{firewall::live::FirewallView, status, Error, Result};

/// Where to listen when not told: loopback only, xdpkit's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9739";
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Longest request head read; more is refused.
const MAX_REQUEST: usize = 8192;

type Labels = Vec<(&'static str, String)>;

/// One counter family: name (without `_total`), help and its series.
struct Family {
    name: &'static str,
    help: &'static str,
    series: Vec<(Labels, u64)>,
}

/// The collector: reads everything anew on each scrape.
#[derive(Debug)]
pub struct XdpkitCollector {
    /// Most rules exported per interface (those with the most packets).
    pub rules_limit: usize,
}

impl XdpkitCollector {
    fn families(&self) -> Vec<Family> {
        let mut packets = Family {
            name: "xdpkit_xdp_packets",
            help: "Frames the XDP program gave each verdict.",
            series: Vec::new(),
        };
        let mut bytes = Family {
            name: "xdpkit_xdp_bytes",
            help: "Bytes of the frames the XDP program gave each verdict.",
            series: Vec::new(),
        };
        let mut outcome_packets = Family {
            name: "xdpkit_firewall_outcome_packets",
            help: "Frames the firewall decided, by what decided them (rule, rate_limited, default, non_ip, fragment, malformed).",
            series: Vec::new(),
        };
        let mut outcome_bytes = Family {
            name: "xdpkit_firewall_outcome_bytes",
            help: "Bytes of the frames the firewall decided, by what decided them.",
            series: Vec::new(),
        };
        let mut rule_packets = Family {
            name: "xdpkit_firewall_rule_packets",
            help: "Frames a firewall rule decided (rate limits: passed and limited).",
            series: Vec::new(),
        };
        let mut rule_bytes = Family {
            name: "xdpkit_firewall_rule_bytes",
            help: "Bytes of the frames a firewall rule decided.",
            series: Vec::new(),
        };
        let mut rule_limited = Family {
            name: "xdpkit_firewall_rule_limited_packets",
            help: "Frames a rate-limit rule dropped for being over its rate.",
            series: Vec::new(),
        };
        let interfaces = match status::status(None, Duration::ZERO) {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!("exporter: cannot read xdpkit's interfaces: {e}");
                Vec::new()
            }
        };
        // Interfaces of other network namespaces share bpffs but are not ours to show.
        for st in interfaces.iter().filter(|s| s.state == "attached") {
            for a in &st.actions {
                let labels = vec![
                    ("interface", st.iface.clone()),
                    ("program", st.program.clone()),
                    ("action", a.action.to_string()),
                ];
                packets.series.push((labels.clone(), a.packets));
                bytes.series.push((labels, a.bytes));
            }
            let Some(outcomes) = &st.firewall else {
                continue;
            };
            for o in outcomes {
                let labels = vec![
                    ("interface", st.iface.clone()),
                    ("outcome", o.outcome.to_string()),
                ];
                outcome_packets.series.push((labels.clone(), o.packets));
                outcome_bytes.series.push((labels, o.bytes));
            }
            let rows = match FirewallView::open(&st.iface).and_then(|fw| fw.list()) {
                Ok(rows) => rows,
                Err(e) => {
                    tracing::warn!("exporter: cannot read the rules of {}: {e}", st.iface);
                    continue;
                }
            };
            let mut rows = rows;
            rows.sort_by(|a, b| b.packets.cmp(&a.packets).then(a.id.cmp(&b.id)));
            for r in rows.iter().take(self.rules_limit) {
                let labels = vec![
                    ("interface", st.iface.clone()),
                    ("rule_id", r.id.to_string()),
                    ("rule", r.rule.clone()),
                ];
                rule_packets.series.push((labels.clone(), r.packets));
                rule_bytes.series.push((labels.clone(), r.bytes));
                if let Some(limited) = r.limited {
                    rule_limited.series.push((labels, limited));
                }
            }
        }
        vec![
            packets,
            bytes,
            outcome_packets,
            outcome_bytes,
            rule_packets,
            rule_bytes,
            rule_limited,
        ]
    }
}

impl Collector for XdpkitCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::result::Result<(), std::fmt::Error> {
        for family in self.families() {
            let first = ConstCounter::new(0u64);
            let mut metric =
                encoder.encode_descriptor(family.name, family.help, None, first.metric_type())?;
            for (labels, value) in &family.series {
                ConstCounter::new(*value).encode(metric.encode_family(labels)?)?;
            }
        }
        Ok(())
    }
}

/// The text a scrape returns now.
pub fn scrape(rules_limit: usize) -> Result<String> {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(XdpkitCollector { rules_limit }));
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)
        .map_err(|_| Error::Internal("cannot encode the metrics".to_string()))?;
    Ok(text)
}

/// Serves `GET /metrics` on `listen` until the process ends, one request
/// at a time (Prometheus scrapes every few seconds).
pub fn serve(listen: SocketAddr, rules_limit: usize) -> Result<()> {
    let listener = TcpListener::bind(listen).map_err(|source| Error::Syscall {
        call: "bind the exporter's address",
        source,
    })?;
    serve_on(&listener, rules_limit)
}

/// [`serve`] on a bound listener.
pub fn serve_on(listener: &TcpListener, rules_limit: usize) -> Result<()> {
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
        ("GET", "/metrics") => match scrape(rules_limit) {
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
