//! What `xdpkit top` shows: for each interface xdpkit manages in this
//! network namespace, rates per action and per CPU, and for a firewall its
//! outcomes (parse errors among them) and busiest rules, from two readings
//! of the pinned counters an interval apart.

use std::{collections::HashMap, time::Duration, time::Instant};

use serde::Serialize;

use crate::{
    firewall::live::{FirewallView, RuleRow},
    pins::{self, PinDir},
    stats::{self, ActionRate, ActionTotals},
    status::{self, IfaceStatus, OutcomeCount},
    Result,
};

/// One interface in one sample.
#[derive(Clone, Debug, Serialize)]
pub struct TopIface {
    /// Interface name.
    pub iface: String,
    /// Program xdpkit attached.
    pub program: String,
    /// All actions together: frames per second.
    pub pps: f64,
    /// All actions together: bits per second.
    pub bps: f64,
    /// Per action: totals and rates.
    pub actions: Vec<ActionRate>,
    /// Each stage of the chain in order, with its own rates per action
    /// (and "next": frames it handed on).
    pub stages: Vec<TopStage>,
    /// Frames per second handled on each CPU (index = CPU).
    pub per_cpu_pps: Vec<f64>,
    /// Firewall only: what decided, with rates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outcomes: Option<Vec<OutcomeRate>>,
    /// Firewall only: truncated or malformed frames per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parse_errors_pps: Option<f64>,
    /// Firewall only: the rules that decided most frames in the interval.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_rules: Option<Vec<RuleRate>>,
}

/// One stage of an interface in one sample.
#[derive(Clone, Debug, Serialize)]
pub struct TopStage {
    /// Program name.
    pub stage: String,
    /// Per action and "next": totals and rates.
    pub actions: Vec<ActionRate>,
}

/// A firewall outcome's totals and rate.
#[derive(Clone, Debug, Serialize)]
pub struct OutcomeRate {
    /// `rule`, `rate_limited`, `default`, `non_ip`, `fragment`, `malformed`.
    pub outcome: &'static str,
    /// Frames since attach.
    pub packets: u64,
    /// Frames per second in the interval.
    pub pps: f64,
}

/// A rule's hits in the interval.
#[derive(Clone, Debug, Serialize)]
pub struct RuleRate {
    /// Rule id.
    pub id: u32,
    /// The rule.
    pub rule: String,
    /// Frames it decided since it was added.
    pub packets: u64,
    /// Frames per second in the interval.
    pub pps: f64,
}

/// Two readings `interval` apart (at least 10 ms) of `dev` or of every
/// attached interface; `rules` busiest rules per firewall.
pub fn sample(dev: Option<&str>, interval: Duration, rules: usize) -> Result<Vec<TopIface>> {
    let interval = interval.max(Duration::from_millis(10));
    let before = read_all(dev, rules > 0)?;
    let started = Instant::now();
    std::thread::sleep(interval);
    let after = read_all(dev, rules > 0)?;
    let secs = started.elapsed().as_secs_f64();
    Ok(after
        .into_iter()
        .filter_map(|now| {
            let then = before.iter().find(|b| b.status.iface == now.status.iface)?;
            Some(compare(then, &now, secs, rules))
        })
        .collect())
}

struct Reading {
    status: IfaceStatus,
    per_cpu: Vec<ActionTotals>,
    rules: Vec<RuleRow>,
}

fn read_all(dev: Option<&str>, with_rules: bool) -> Result<Vec<Reading>> {
    let list = status::status(dev, Duration::ZERO)?;
    Ok(list
        .into_iter()
        .filter(|s| s.state == "attached")
        .filter_map(|s| {
            let dir = PinDir::new(&s.iface).ok()?;
            let per_cpu = per_cpu_verdicts(&dir);
            let rules = if with_rules && s.firewall.is_some() {
                FirewallView::open(&s.iface)
                    .and_then(|fw| fw.list())
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            Some(Reading {
                status: s,
                per_cpu,
                rules,
            })
        })
        .collect())
}

/// Each CPU's verdicts over every stage of the interface.
fn per_cpu_verdicts(dir: &PinDir) -> Vec<ActionTotals> {
    let mut sum: Vec<ActionTotals> = Vec::new();
    for stage in status::stages(dir) {
        let cpus =
            stats::read_pinned_per_cpu(&dir.stage(&stage).file(pins::STATS)).unwrap_or_default();
        sum.resize(sum.len().max(cpus.len()), ActionTotals::default());
        for (total, cpu) in sum.iter_mut().zip(&cpus) {
            *total = total.plus(cpu);
        }
    }
    for cpu in &mut sum {
        *cpu = status::interface_totals(std::slice::from_ref(cpu));
    }
    sum
}

fn compare(then: &Reading, now: &Reading, secs: f64, rules: usize) -> TopIface {
    let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
    let rates = |now: &[ActionRate], then: &[ActionRate]| -> Vec<ActionRate> {
        now.iter()
            .map(|a| {
                let old = then.iter().find(|o| o.action == a.action);
                ActionRate {
                    pps: rate(a.packets, old.map_or(0, |o| o.packets)),
                    bps: rate(a.bytes, old.map_or(0, |o| o.bytes)) * 8.0,
                    ..a.clone()
                }
            })
            .collect()
    };
    let actions = rates(&now.status.actions, &then.status.actions);
    let stages = now
        .status
        .stages
        .iter()
        .map(|stage| {
            let old = then
                .status
                .stages
                .iter()
                .find(|o| o.stage == stage.stage)
                .map_or(&[][..], |o| o.actions.as_slice());
            TopStage {
                stage: stage.stage.clone(),
                actions: rates(&stage.actions, old),
            }
        })
        .collect();
    let per_cpu_pps = now
        .per_cpu
        .iter()
        .enumerate()
        .map(|(cpu, t)| {
            let old = then.per_cpu.get(cpu).map_or(0, |o| o.total().packets);
            rate(t.total().packets, old)
        })
        .collect();
    let outcomes = now.status.firewall.as_ref().map(|list| {
        list.iter()
            .map(|o: &OutcomeCount| {
                let old = then
                    .status
                    .firewall
                    .as_ref()
                    .and_then(|l| l.iter().find(|x| x.outcome == o.outcome))
                    .map_or(0, |x| x.packets);
                OutcomeRate {
                    outcome: o.outcome,
                    packets: o.packets,
                    pps: rate(o.packets, old),
                }
            })
            .collect::<Vec<_>>()
    });
    let parse_errors_pps = outcomes.as_ref().map(|list| {
        list.iter()
            .filter(|o| o.outcome == "malformed")
            .map(|o| o.pps)
            .sum()
    });
    let top_rules = outcomes.as_ref().map(|_| {
        let old: HashMap<u32, u64> = then.rules.iter().map(|r| (r.id, r.packets)).collect();
        let mut list: Vec<RuleRate> = now
            .rules
            .iter()
            .map(|r| RuleRate {
                id: r.id,
                rule: r.rule.clone(),
                packets: r.packets,
                pps: rate(r.packets, old.get(&r.id).copied().unwrap_or(0)),
            })
            .collect();
        list.sort_by(|a, b| b.pps.total_cmp(&a.pps).then(b.packets.cmp(&a.packets)));
        list.truncate(rules);
        list
    });
    TopIface {
        iface: now.status.iface.clone(),
        program: now.status.program.clone(),
        pps: actions.iter().map(|a| a.pps).sum(),
        bps: actions.iter().map(|a| a.bps).sum(),
        actions,
        stages,
        per_cpu_pps,
        outcomes,
        parse_errors_pps,
        top_rules,
    }
}
