//! `xdpkit fleet` and `xdpkit agent`: hosts following one configuration
//! through etcd.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use xdpkit::{
    config::{self, HostConfig},
    fleet::{
        agent::{self, AgentOptions, AgentStatus},
        keys, merge,
        store::{EtcdOptions, Store},
    },
};

use crate::output::{print_json, JsonArg};

/// How to reach etcd (etcdctl's option names).
#[derive(Debug, clap::Args)]
pub struct EtcdArgs {
    /// etcd client URLs, comma-separated.
    #[arg(
        long,
        value_name = "URL[,URL...]",
        env = "XDPKIT_ETCD",
        default_value = "http://127.0.0.1:2379",
        value_delimiter = ','
    )]
    etcd: Vec<String>,
    /// etcd user, as NAME:PASSWORD (etcd's authentication).
    #[arg(long, value_name = "NAME:PASSWORD", env = "XDPKIT_ETCD_USER")]
    user: Option<String>,
    /// CA certificate (PEM) that signs the etcd servers' certificates.
    #[arg(long, value_name = "FILE")]
    cacert: Option<PathBuf>,
    /// Client certificate (PEM), for servers that ask for one (with --key).
    #[arg(long, value_name = "FILE", requires = "key")]
    cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long, value_name = "FILE", requires = "cert")]
    key: Option<PathBuf>,
    /// Seconds allowed for connecting and for each request.
    #[arg(long, value_name = "SECS", default_value_t = 5.0)]
    timeout: f64,
}

impl EtcdArgs {
    fn options(&self) -> anyhow::Result<EtcdOptions> {
        let user = match &self.user {
            Some(u) => Some(
                u.split_once(':')
                    .map(|(n, p)| (n.to_string(), p.to_string()))
                    .ok_or_else(|| {
                        xdpkit::Error::InvalidArgument("--user takes NAME:PASSWORD".to_string())
                    })?,
            ),
            None => None,
        };
        if !(0.1..=600.0).contains(&self.timeout) {
            return Err(xdpkit::Error::InvalidArgument(format!(
                "--timeout {}: from 0.1 to 600 seconds",
                self.timeout
            ))
            .into());
        }
        Ok(EtcdOptions {
            endpoints: self.etcd.clone(),
            user,
            ca: self.cacert.clone(),
            cert: self.cert.clone().zip(self.key.clone()),
            timeout: Some(Duration::from_secs_f64(self.timeout)),
        })
    }
}

/// Follow this host's configuration in etcd and apply every change.
///
/// The agent reads the layers that apply to this host, merges them in
/// order (its groups as given, then its own key: /xdpkit/groups/<G>...,
/// /xdpkit/hosts/<NAME>; a later layer's declaration of an interface
/// replaces an earlier one's whole), applies the result with the same code
/// as `xdpkit apply` (everything prepared, then switched at once; stages
/// that stay keep their maps and counters) and watches the keys for the
/// next change. It writes what it applied, when, the outcome or error and
/// a summary of counters to /xdpkit/status/<NAME>, under a lease: a dead
/// agent's status disappears after --status-ttl seconds.
///
/// Faults: while etcd is unreachable the running configuration stays and
/// the agent retries (0.5 s doubling to 10 s), then reads everything again;
/// a layer that does not parse or does not apply is not applied, the
/// status says why, and the last good configuration keeps running; a
/// restarted agent applies once (a no-op that keeps counters when what
/// runs matches). It needs the privileges of `xdpkit apply`, nothing else.
///
/// Examples:
///   xdpkit agent --etcd http://10.0.0.5:2379 --host edge-fra-1 --group edge --group fra
///   xdpkit agent --etcd https://etcd:2379 --cacert ca.pem --cert h1.pem --key h1-key.pem --host h1
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct AgentArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// This host's name in the fleet.
    #[arg(long, value_name = "NAME")]
    host: String,
    /// A group this host belongs to (repeat; merged in the order given).
    #[arg(long = "group", value_name = "G")]
    groups: Vec<String>,
    /// Seconds the status outlives a silent agent.
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    status_ttl: i64,
    /// Where the agent keeps what it applied across restarts.
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
    /// Replace XDP programs other tools attached (as `apply --force`).
    #[arg(long)]
    force: bool,
}

pub fn run_agent(a: AgentArgs) -> anyhow::Result<()> {
    if !(2..=3600).contains(&a.status_ttl) {
        return Err(xdpkit::Error::InvalidArgument(format!(
            "--status-ttl {}: from 2 to 3600 seconds",
            a.status_ttl
        ))
        .into());
    }
    let opts = AgentOptions {
        etcd: a.etcd.options()?,
        state_file: a
            .state_file
            .unwrap_or_else(|| PathBuf::from(format!("/run/xdpkit/agent-{}.json", a.host))),
        host: a.host,
        groups: a.groups,
        status_ttl: a.status_ttl,
        force: a.force,
    };
    xdpkit::privilege::require("agent")?;
    agent::run(&opts)?;
    Ok(())
}

/// Push configurations to etcd and see the hosts that follow them.
///
/// Examples:
///   xdpkit fleet push -f edge.toml --group edge
///   xdpkit fleet push -f h1.toml --host h1
///   xdpkit fleet status
///   xdpkit fleet diff --host h1
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: FleetCommand,
}

#[derive(Debug, clap::Subcommand)]
enum FleetCommand {
    Push(PushArgs),
    Status(StatusArgs),
    Diff(DiffArgs),
}

/// Check a host configuration file and store it as a group's or a host's layer.
///
/// The file is what `xdpkit apply -f` takes; it is checked the same way
/// (a bad file exits 2 naming file:line and key, and nothing is written),
/// then normalised (a rules-file inlined), compressed and stored in parts
/// of at most 1 MiB (etcd refuses requests above 1.5 MiB), then the layer's
/// key is switched to it in one write: agents see the old layer or the new
/// one whole. A 1M-prefix blocklist fits.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct PushArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// The configuration file.
    #[arg(short, long, value_name = "FILE")]
    file: PathBuf,
    /// Store it as group G's layer.
    #[arg(
        long,
        value_name = "G",
        conflicts_with = "host",
        required_unless_present = "host"
    )]
    group: Option<String>,
    /// Store it as host NAME's own layer.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
    #[command(flatten)]
    json: JsonArg,
}

/// Every agent: what it runs, how far behind the store it is, its errors.
///
/// One line per host with a status (a live agent) or a layer of its own:
/// its outcome (applied, unchanged, error), the revision it read, whether
/// its running layers are the newest (lag: how many of its layers changed
/// since), when it applied them, and its counters.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct StatusArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    #[command(flatten)]
    json: JsonArg,
}

/// What each agent would change: its running layers against the newest.
#[derive(Debug, clap::Args)]
#[command(verbatim_doc_comment)]
struct DiffArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Only this host.
    #[arg(long, value_name = "NAME")]
    host: Option<String>,
}

pub fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        FleetCommand::Push(p) => push(p),
        FleetCommand::Status(s) => status(s),
        FleetCommand::Diff(d) => diff(d),
    }
}

fn push(a: PushArgs) -> anyhow::Result<()> {
    let key = match (&a.group, &a.host) {
        (Some(g), _) => {
            keys::check_name("group", g)?;
            keys::group(g)
        }
        (None, Some(h)) => {
            keys::check_name("host", h)?;
            keys::host(h)
        }
        (None, None) => unreachable!("clap requires one"),
    };
    let host = xdpkit::apply::read(&a.file)?;
    let text = host.to_toml_string();
    let mut store = Store::connect(&a.etcd.options()?)?;
    let (manifest, revision) = store.push(&key, &text, &a.file.display().to_string())?;
    if a.json.json {
        return print_json(&serde_json::json!({
            "key": key,
            "revision": revision,
            "manifest": manifest,
            "interfaces": host.interfaces.keys().collect::<Vec<_>>(),
        }));
    }
    outln!(
        "pushed {} to {key}: {} interface{}, {} bytes ({} compressed, {} part{}), revision {revision}",
        a.file.display(),
        host.interfaces.len(),
        if host.interfaces.len() == 1 { "" } else { "s" },
        manifest.bytes,
        manifest.compressed,
        manifest.parts,
        if manifest.parts == 1 { "" } else { "s" },
    );
    Ok(())
}

/// One host as `fleet status` shows it.
#[derive(Debug, serde::Serialize)]
struct HostLine {
    host: String,
    /// Its agent's status, if one is alive.
    status: Option<AgentStatus>,
    /// Its layers whose newest content differs from what runs.
    behind: Vec<String>,
    /// Of the layers it is behind on: revisions between the one it runs
    /// and the newest (0: up to date).
    lag: i64,
}

fn hosts(store: &mut Store) -> anyhow::Result<Vec<HostLine>> {
    let mut lines: std::collections::BTreeMap<String, HostLine> = Default::default();
    for (key, value) in store.list(keys::STATUS)? {
        let name = key.trim_start_matches(keys::STATUS).to_string();
        let status: AgentStatus = serde_json::from_slice(&value)
            .with_context(|| format!("{key} is not an agent's status"))?;
        lines.insert(
            name.clone(),
            HostLine {
                host: name,
                status: Some(status),
                behind: Vec::new(),
                lag: 0,
            },
        );
    }
    for (key, _) in store.list(keys::HOSTS)? {
        let name = key.trim_start_matches(keys::HOSTS).to_string();
        lines.entry(name.clone()).or_insert(HostLine {
            host: name,
            status: None,
            behind: Vec::new(),
            lag: 0,
        });
    }
    for line in lines.values_mut() {
        let Some(st) = &line.status else { continue };
        for key in keys::layers(&st.host, &st.groups) {
            // A damaged layer is news for the status, not a reason to fail.
            // The manifest says what the layer holds: its parts need not be read.
            let newest = match store.manifest(&key) {
                Ok(layer) => layer,
                Err(xdpkit::fleet::FleetError::Damaged { .. }) => {
                    line.behind.push(key.clone());
                    continue;
                }
                Err(e) => return Err(e.into()),
            };
            let running = st.layers.iter().find(|l| l.key == key);
            let differs = match (&newest, running) {
                (Some((n, _)), Some(r)) => n.id != r.id,
                (Some(_), None) => true,
                (None, Some(_)) => true,
                (None, None) => false,
            };
            if differs {
                line.behind.push(key.clone());
                let ran = running.map_or(0, |r| r.mod_revision);
                if let Some((_, modified)) = &newest {
                    line.lag = line.lag.max(modified - ran);
                }
            }
        }
    }
    Ok(lines.into_values().collect())
}

fn ago(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!("{}s ago", now.saturating_sub(secs))
}

fn status(a: StatusArgs) -> anyhow::Result<()> {
    let mut store = Store::connect(&a.etcd.options()?)?;
    let lines = hosts(&mut store)?;
    if a.json.json {
        return print_json(&lines);
    }
    if lines.is_empty() {
        outln!("no agents and no host layers in the store");
    }
    for line in &lines {
        let Some(st) = &line.status else {
            outln!(
                "{}: no agent (its layer is stored; the agent is not running or lost its lease)",
                line.host
            );
            continue;
        };
        let state = if line.behind.is_empty() {
            "up to date".to_string()
        } else {
            format!(
                "behind on {} (lag {} revisions)",
                line.behind.join(", "),
                line.lag
            )
        };
        let counters: Vec<String> = st
            .counters
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        outln!(
            "{}: {} at revision {}, {state}, applied {}, interfaces {}, {}",
            line.host,
            st.outcome,
            st.revision,
            ago(st.applied_at),
            if st.interfaces.is_empty() {
                "none".to_string()
            } else {
                st.interfaces.join(",")
            },
            if counters.is_empty() {
                "no frames".to_string()
            } else {
                counters.join(", ")
            },
        );
        if let Some(e) = &st.error {
            outln!("  error: {e}");
        }
    }
    Ok(())
}

/// The merged configuration of `layers` read with `read`.
fn merged(store: &mut Store, layers: &[(String, Option<i64>)]) -> anyhow::Result<HostConfig> {
    let mut parsed = Vec::new();
    for (key, revision) in layers {
        if let Some(layer) = store.layer(key, *revision)? {
            parsed.push(
                HostConfig::parse(key, &layer.text, std::path::Path::new("/"))
                    .map_err(xdpkit::Error::Config)?,
            );
        }
    }
    Ok(merge::merge(&parsed))
}

fn diff(a: DiffArgs) -> anyhow::Result<()> {
    let mut store = Store::connect(&a.etcd.options()?)?;
    let lines = hosts(&mut store)?;
    let mut shown = 0;
    for line in lines {
        if a.host.as_ref().is_some_and(|h| *h != line.host) {
            continue;
        }
        let Some(st) = line.status else { continue };
        shown += 1;
        let running: Vec<(String, Option<i64>)> = st
            .layers
            .iter()
            .map(|l| (l.key.clone(), Some(l.mod_revision)))
            .collect();
        let newest: Vec<(String, Option<i64>)> = keys::layers(&st.host, &st.groups)
            .into_iter()
            .map(|k| (k, None))
            .collect();
        let was = merged(&mut store, &running)
            .with_context(|| format!("{}: reading the layers it runs", st.host))?;
        let will = merged(&mut store, &newest)
            .with_context(|| format!("{}: reading its newest layers", st.host))?;
        outln!("{}:", st.host);
        for l in config::diff(&will, &was).render().lines() {
            outln!("  {l}");
        }
    }
    if shown == 0 {
        return Err(xdpkit::Error::InvalidArgument(match a.host {
            Some(h) => format!("no agent of host '{h}' in the store"),
            None => "no agents in the store".to_string(),
        })
        .into());
    }
    Ok(())
}
