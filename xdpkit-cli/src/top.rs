//! `xdpkit top`

use std::{io::IsTerminal as _, sync::mpsc, time::Duration};

use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Block, Borders, Paragraph, Row, Table},
    Frame,
};
use xdpkit::top::{self, TopIface};

use crate::output::{print_json, si};

/// Live view of the interfaces xdpkit manages in this network namespace:
/// per interface the frames and bits per second of each XDP verdict, the
/// split across CPUs, and for a firewall what decided (rules, default,
/// rate limits, non-IP, fragments, parse errors) and its busiest rules.
/// Refreshes every --interval; q, Esc or Ctrl-C quits.
///
/// With --once, takes one sample (two readings --interval apart), prints it
/// and exits: as a table, or with --json as a JSON array, for scripts.
///
/// Examples:
///   xdpkit top
///   xdpkit top --dev eth0 --interval 2
///   xdpkit top --once --json
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Only this interface.
    #[arg(short, long, value_name = "IF")]
    pub dev: Option<String>,

    /// Seconds between readings.
    #[arg(long, value_name = "S", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,

    /// Busiest firewall rules shown per interface.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub rules: usize,

    /// One sample, printed, then exit.
    #[arg(long)]
    pub once: bool,

    /// With --once: print JSON.
    #[arg(long, requires = "once")]
    pub json: bool,
}

fn parse_interval(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if (0.1..=3600.0).contains(&s) => Ok(s),
        _ => Err("expected seconds from 0.1 to 3600".to_string()),
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let interval = Duration::from_secs_f64(args.interval);
    if args.once {
        let sample = top::sample(args.dev.as_deref(), interval, args.rules)?;
        if args.json {
            return print_json(&sample);
        }
        for iface in &sample {
            out!("{}", text(iface));
        }
        if sample.is_empty() {
            outln!("no interface with an xdpkit program in this network namespace");
        }
        return Ok(());
    }
    if !std::io::stdout().is_terminal() {
        return Err(xdpkit::Error::InvalidArgument(
            "top draws on a terminal: use --once (and --json) for scripts".to_string(),
        )
        .into());
    }
    // The first sample also checks the arguments before the screen changes.
    let first = top::sample(args.dev.as_deref(), interval, args.rules)?;
    let (tx, rx) = mpsc::channel();
    let dev = args.dev.clone();
    let rules = args.rules;
    std::thread::spawn(move || loop {
        let sample = top::sample(dev.as_deref(), interval, rules).map_err(|e| e.to_string());
        if tx.send(sample).is_err() {
            return;
        }
    });
    let mut terminal = ratatui::init();
    let mut shown: Result<Vec<TopIface>, String> = Ok(first);
    let result = (|| -> anyhow::Result<()> {
        loop {
            terminal.draw(|f| draw(f, &shown, interval))?;
            if event::poll(Duration::from_millis(100))? {
                if let Event::Key(k) = event::read()? {
                    let ctrl_c =
                        k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                    let quit = matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c;
                    if k.kind == KeyEventKind::Press && quit {
                        return Ok(());
                    }
                }
            }
            while let Ok(sample) = rx.try_recv() {
                shown = sample;
            }
        }
    })();
    ratatui::restore();
    result
}

fn draw(f: &mut Frame, shown: &Result<Vec<TopIface>, String>, interval: Duration) {
    let title = format!(
        " xdpkit top: every {:.1} s, q to quit ",
        interval.as_secs_f64()
    );
    let area = f.area();
    let list = match shown {
        Ok(list) if !list.is_empty() => list,
        Ok(_) => {
            let p = Paragraph::new("no interface with an xdpkit program in this network namespace")
                .block(Block::default().title(title).borders(Borders::ALL));
            f.render_widget(p, area);
            return;
        }
        Err(e) => {
            let p = Paragraph::new(format!("cannot read the counters: {e}"))
                .block(Block::default().title(title).borders(Borders::ALL));
            f.render_widget(p, area);
            return;
        }
    };
    let heights: Vec<Constraint> = list
        .iter()
        .map(|i| Constraint::Length(height(i)))
        .chain([Constraint::Min(0)])
        .collect();
    let outer = Block::default().title(title).borders(Borders::ALL);
    let inner = outer.inner(area);
    f.render_widget(outer, area);
    let areas = Layout::vertical(heights).split(inner);
    for (iface, area) in list.iter().zip(areas.iter()) {
        draw_iface(f, iface, *area);
    }
}

fn height(i: &TopIface) -> u16 {
    let rules = i.top_rules.as_ref().map_or(0, |r| r.len() + 2);
    let outcomes = if i.outcomes.is_some() { 3 } else { 0 };
    (2 + 6 + 1 + i.stages.len() + outcomes + rules + 1) as u16
}

fn draw_iface(f: &mut Frame, i: &TopIface, area: ratatui::layout::Rect) {
    let block = Block::default()
        .borders(Borders::TOP)
        .title(format!(
            " {} ({}): {} pps, {} ",
            i.iface,
            i.program,
            si(i.pps),
            bits(i.bps)
        ))
        .title_style(Style::default().add_modifier(Modifier::BOLD));
    let inner = block.inner(area);
    f.render_widget(block, area);
    let outcome_rows = if i.outcomes.is_some() { 3 } else { 0 };
    let rule_rows = i.top_rules.as_ref().map_or(0, |r| r.len() as u16 + 2);
    let parts = Layout::vertical([
        Constraint::Length(6),
        Constraint::Length(1 + i.stages.len() as u16),
        Constraint::Length(outcome_rows),
        Constraint::Length(rule_rows),
    ])
    .split(inner);
    let header = Row::new(["action", "pps", "bps", "packets", "bytes"])
        .style(Style::default().add_modifier(Modifier::BOLD));
    let rows = i.actions.iter().map(|a| {
        Row::new([
            a.action.to_string(),
            si(a.pps),
            bits(a.bps),
            a.packets.to_string(),
            a.bytes.to_string(),
        ])
    });
    let widths = [
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(12),
        Constraint::Length(14),
        Constraint::Length(16),
    ];
    f.render_widget(Table::new(rows, widths).header(header), parts[0]);
    let mut lines = vec![Line::from(per_cpu(i))];
    lines.extend(i.stages.iter().map(|s| Line::from(stage_line(s))));
    f.render_widget(Paragraph::new(lines), parts[1]);
    if let Some(outcomes) = &i.outcomes {
        let line: Vec<String> = outcomes
            .iter()
            .map(|o| format!("{} {} pps ({})", o.outcome, si(o.pps), o.packets))
            .collect();
        let text = vec![
            Line::from("firewall outcomes:"),
            Line::from(line.join("  ")),
            Line::from(format!(
                "parse errors: {} pps",
                si(i.parse_errors_pps.unwrap_or(0.0))
            )),
        ];
        f.render_widget(Paragraph::new(text), parts[2]);
    }
    if let Some(rules) = &i.top_rules {
        let header = Row::new(["id", "pps", "packets", "rule"])
            .style(Style::default().add_modifier(Modifier::BOLD));
        let rows = rules.iter().map(|r| {
            Row::new([
                r.id.to_string(),
                si(r.pps),
                r.packets.to_string(),
                r.rule.clone(),
            ])
        });
        let widths = [
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(14),
            Constraint::Min(20),
        ];
        let table = Table::new(rows, widths)
            .header(header)
            .block(Block::default().title("busiest rules"));
        f.render_widget(table, parts[3]);
    }
}

/// `per CPU, pps: cpu0 1.2 M  cpu1 0`.
fn per_cpu(i: &TopIface) -> String {
    let cpus: Vec<String> = i
        .per_cpu_pps
        .iter()
        .enumerate()
        .map(|(c, pps)| format!("cpu{c} {}", si(*pps)))
        .collect();
    format!("per CPU, pps: {}", cpus.join("  "))
}

/// `stage firewall: drop 1.2 M pps, next 300 pps` (actions with traffic only).
fn stage_line(s: &xdpkit::top::TopStage) -> String {
    let busy: Vec<String> = s
        .actions
        .iter()
        .filter(|a| a.packets > 0)
        .map(|a| format!("{} {} pps", a.action, si(a.pps)))
        .collect();
    let busy = if busy.is_empty() {
        "no frames yet".to_string()
    } else {
        busy.join(", ")
    };
    format!("stage {}: {busy}", s.stage)
}

/// `12.3 Mbps`.
fn bits(bps: f64) -> String {
    format!("{}bps", si(bps))
}

/// One sample as plain text (`--once` without `--json`).
fn text(i: &TopIface) -> String {
    let mut out = format!(
        "{} ({}): {} pps, {}\n",
        i.iface,
        i.program,
        si(i.pps),
        bits(i.bps)
    );
    for a in &i.actions {
        out += &format!(
            "  {:<10} {:>10} pps {:>12} {:>14} packets\n",
            a.action,
            si(a.pps),
            bits(a.bps),
            a.packets
        );
    }
    out += &format!("  {}\n", per_cpu(i));
    for stage in &i.stages {
        out += &format!("  {}\n", stage_line(stage));
    }
    if let Some(outcomes) = &i.outcomes {
        for o in outcomes {
            out += &format!(
                "  firewall {:<12} {:>10} pps {:>14} packets\n",
                o.outcome,
                si(o.pps),
                o.packets
            );
        }
    }
    if let Some(rules) = &i.top_rules {
        for r in rules {
            out += &format!(
                "  rule {:>6} {:>10} pps {:>14} packets  {}\n",
                r.id,
                si(r.pps),
                r.packets,
                r.rule
            );
        }
    }
    out
}
