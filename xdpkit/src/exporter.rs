//! A Prometheus exporter: on each scrape, the counters of every interface
//! xdpkit manages in this network namespace (per action, per firewall
//! outcome, per firewall rule), read from the pinned maps and written in
//! the OpenMetrics text format by the prometheus-client crate. Serving it
//! over HTTP is the CLI's (`xdpkit exporter`).

use std::time::Duration;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::counter::ConstCounter,
    registry::Registry,
};

use crate::{firewall::live::FirewallView, status, Error, Result};

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
        let mut stage_packets = Family {
            name: "xdpkit_stage_packets",
            help: "Frames each stage of an interface's chain gave each verdict, or handed on (action=\"next\").",
            series: Vec::new(),
        };
        let mut stage_bytes = Family {
            name: "xdpkit_stage_bytes",
            help: "Bytes of the frames each stage gave each verdict or handed on.",
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
            for stage in &st.stages {
                for a in &stage.actions {
                    let labels = vec![
                        ("interface", st.iface.clone()),
                        ("stage", stage.stage.clone()),
                        ("action", a.action.to_string()),
                    ];
                    stage_packets.series.push((labels.clone(), a.packets));
                    stage_bytes.series.push((labels, a.bytes));
                }
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
            stage_packets,
            stage_bytes,
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
