//! `xdpkit agent`: one host following its layers in etcd.
//!
//! A session: connect, take a lease, read every layer of the host at one
//! revision, apply the merged configuration (the same code as `xdpkit
//! apply`: prepared whole, then switched), write the status under the
//! lease, then watch the layer keys and do the same on every change. Any
//! error of the store (unreachable, a watch cancelled or compacted past
//! what the agent saw) ends the session; the next one starts after a
//! backoff with a full read, so nothing missed stays missed. What runs is
//! never touched by a store that is away: the last configuration applied
//! keeps running. A layer that does not parse or does not apply is not
//! applied: the status says why and the last good configuration runs on.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions};

pub use super::status::{AgentStatus, AppliedLayer};
use super::{
    keys, merge,
    store::{self, etcd_error, EtcdOptions, Layer},
    FleetError,
};
use crate::{
    apply::{self, ApplyOptions},
    config::HostConfig,
};

/// What the agent follows.
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The store.
    pub etcd: EtcdOptions,
    /// This host's name (`/xdpkit/hosts/<NAME>`, `/xdpkit/status/<NAME>`).
    pub host: String,
    /// Its groups, in merge order.
    pub groups: Vec<String>,
    /// Seconds the status outlives a silent agent (its lease).
    pub status_ttl: i64,
    /// Where the agent remembers what it applied, across restarts.
    pub state_file: PathBuf,
    /// Replace XDP programs other tools attached (as `apply --force`).
    pub force: bool,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Runs the agent until the process ends: sessions with backoff between
/// them (0.5 s doubling to 10 s, reset by a session that got going).
pub fn run(opts: &AgentOptions) -> Result<(), FleetError> {
    keys::check_name("host", &opts.host)?;
    for g in &opts.groups {
        keys::check_name("group", g)?;
    }
    let runtime = store::runtime()?;
    runtime.block_on(async {
        let mut status = load_state(&opts.state_file).unwrap_or_default();
        status.host = opts.host.clone();
        status.groups = opts.groups.clone();
        let mut backoff = Duration::from_millis(500);
        let mut checked = false;
        loop {
            status.sessions += 1;
            let started = std::time::Instant::now();
            let err = session(opts, &mut status, &mut checked).await;
            tracing::warn!(
                "{}: the session with the store ended ({err}); the running configuration stays; starting again in {:.1} s",
                opts.host,
                backoff.as_secs_f64()
            );
            if started.elapsed() > Duration::from_secs(30) {
                backoff = Duration::from_millis(500);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    })
}

/// One session with the store; returns why it ended.
async fn session(opts: &AgentOptions, status: &mut AgentStatus, checked: &mut bool) -> FleetError {
    let endpoints = opts.etcd.endpoints.join(",");
    let mut client = match store::connect(&opts.etcd).await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let lease = match client.lease_grant(opts.status_ttl, None).await {
        Ok(l) => l.id(),
        Err(e) => return etcd_error(&endpoints, "lease grant".into(), e),
    };
    let (keeper, acks) = match client.lease_keep_alive(lease).await {
        Ok(k) => k,
        Err(e) => return etcd_error(&endpoints, "lease keep-alive".into(), e),
    };
    // The lease is kept alive on a task of its own: an apply (seconds for
    // a million prefixes) must not stop the keep-alives, or the status
    // would expire mid-apply and the session end before reporting it.
    let (lost_tx, mut lost) = tokio::sync::oneshot::channel();
    let _keep_alive = AbortOnDrop(tokio::spawn(keep_alive(
        keeper,
        acks,
        opts.status_ttl,
        endpoints.clone(),
        keys::status(&opts.host),
        lost_tx,
    )));
    let layer_keys = keys::layers(&opts.host, &opts.groups);
    // Watch from the revision of the full read on: nothing between is lost.
    let revision = match sync(
        &mut client,
        &endpoints,
        opts,
        &layer_keys,
        status,
        lease,
        checked,
    )
    .await
    {
        Ok(r) => r,
        Err(e) => return e,
    };
    let mut watch = match client
        .watch(
            layer_keys[0].clone(),
            Some(WatchOptions::new().with_start_revision(revision + 1)),
        )
        .await
    {
        Ok(w) => w,
        Err(e) => return etcd_error(&endpoints, "watch".into(), e),
    };
    for key in &layer_keys[1..] {
        if let Err(e) = watch
            .watch(
                key.clone(),
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            )
            .await
        {
            return etcd_error(&endpoints, format!("watch {key}"), e);
        }
    }
    loop {
        tokio::select! {
            why = &mut lost => {
                return why.unwrap_or_else(|_| FleetError::Damaged {
                    key: keys::status(&opts.host),
                    why: "the lease's keep-alive stopped".into(),
                });
            }
            msg = watch.message() => {
                let resp = match msg {
                    Ok(Some(r)) => r,
                    Ok(None) => return FleetError::Damaged { key: layer_keys.join(","), why: "the watch ended".into() },
                    Err(e) => return etcd_error(&endpoints, "watch".into(), e),
                };
                if resp.canceled() || resp.compact_revision() > 0 {
                    // Compacted past what this agent saw: start over with a full read.
                    return FleetError::Damaged {
                        key: layer_keys.join(","),
                        why: format!("the watch was cancelled (compacted to {}): full resync", resp.compact_revision()),
                    };
                }
                let changed = resp.events().iter().any(|e| {
                    matches!(e.event_type(), EventType::Put | EventType::Delete)
                });
                if changed {
                    if let Err(e) = sync(&mut client, &endpoints, opts, &layer_keys, status, lease, checked).await {
                        return e;
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped (when its session ends, however it ends).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Keeps `lease` alive (a keep-alive every third of its TTL) until the
/// store stops answering; then says why on `lost`.
async fn keep_alive(
    mut keeper: etcd_client::LeaseKeeper,
    mut acks: etcd_client::LeaseKeepAliveStream,
    ttl_secs: i64,
    endpoints: String,
    status_key: String,
    lost: tokio::sync::oneshot::Sender<FleetError>,
) {
    let beat = Duration::from_secs((ttl_secs as u64 / 3).max(1));
    let ttl = Duration::from_secs(ttl_secs as u64);
    let mut ticker = tokio::time::interval(beat);
    // A link that silently stops carrying (no reset) shows as keep-alives
    // without answers: after a lease's worth the session is over.
    let mut last_ack = tokio::time::Instant::now();
    let why = loop {
        tokio::select! {
            _ = ticker.tick() => {
                if last_ack.elapsed() > ttl {
                    break FleetError::Damaged {
                        key: status_key,
                        why: format!("no answer from the store for {ttl_secs} s"),
                    };
                }
                if let Err(e) = keeper.keep_alive().await {
                    break etcd_error(&endpoints, "lease keep-alive".into(), e);
                }
            }
            ack = acks.message() => match ack {
                Ok(Some(a)) if a.ttl() > 0 => last_ack = tokio::time::Instant::now(),
                Ok(_) => break FleetError::Damaged { key: status_key, why: "the status lease expired".into() },
                Err(e) => break etcd_error(&endpoints, "lease keep-alive".into(), e),
            },
        }
    };
    let _ = lost.send(why);
}

/// Reads every layer at one revision, applies what changed, writes the
/// status. Returns the revision read.
async fn sync(
    client: &mut Client,
    endpoints: &str,
    opts: &AgentOptions,
    layer_keys: &[String],
    status: &mut AgentStatus,
    lease: i64,
    checked: &mut bool,
) -> Result<i64, FleetError> {
    // One revision for all layers: a push racing this read is either in
    // all of them or in none. Any read answers with the store's revision;
    // the first layer key is one the agent's etcd user may read (a role
    // limited to the fleet's layers, parts and this host's status).
    let head = client
        .get(
            layer_keys[0].as_str(),
            Some(GetOptions::new().with_keys_only().with_limit(1)),
        )
        .await
        .map_err(|e| etcd_error(endpoints, "read the store's revision".into(), e))?;
    let revision = head.header().map_or(0, |h| h.revision());
    let mut layers: Vec<Layer> = Vec::new();
    let mut read_error = None;
    for key in layer_keys {
        match store::read_layer(client, endpoints, key, Some(revision)).await {
            Ok(Some(layer)) => layers.push(layer),
            Ok(None) => {}
            Err(e @ (FleetError::Etcd { .. } | FleetError::Refused { .. })) => return Err(e),
            Err(e) => read_error = Some(e.to_string()),
        }
    }
    status.revision = revision;
    status.seen = layers.iter().map(applied_layer).collect();
    let outcome = match read_error {
        Some(e) => Err(e),
        // Within one process the layers it applied run unless it changed
        // them; a restarted agent applies once anyway (a no-op that keeps
        // every counter when what runs matches, a repair when it does not).
        None if *checked && status.outcome != "error" && status.seen == status.layers => {
            Ok("unchanged")
        }
        None => {
            let force = opts.force;
            tokio::task::spawn_blocking(move || apply_layers(&layers, force))
                .await
                .unwrap_or_else(|e| Err(format!("the apply panicked: {e}")))
        }
    };
    match outcome {
        Ok(word) => {
            *checked = true;
            if word == "applied" || status.applied_at == 0 {
                status.applied_at = now();
            }
            status.layers = status.seen.clone();
            status.outcome = word.to_string();
            status.error = None;
            tracing::info!("{}: revision {revision}: {word}", opts.host);
        }
        Err(e) => {
            tracing::warn!("{}: revision {revision} not applied: {e}", opts.host);
            status.outcome = "error".to_string();
            status.error = Some(e);
        }
    }
    let (counters, interfaces) = summary();
    status.counters = counters;
    status.interfaces = interfaces;
    status.updated_at = now();
    save_state(&opts.state_file, status);
    let value = serde_json::to_vec(status).unwrap_or_default();
    client
        .put(
            keys::status(&opts.host),
            value,
            Some(PutOptions::new().with_lease(lease)),
        )
        .await
        .map_err(|e| etcd_error(endpoints, "write the status".into(), e))?;
    Ok(revision)
}

/// Parses each layer, merges them and applies the result: `applied` or
/// `unchanged`, or why not (nothing changed then).
fn apply_layers(layers: &[Layer], force: bool) -> Result<&'static str, String> {
    let mut parsed = Vec::with_capacity(layers.len());
    for layer in layers {
        let host = HostConfig::parse(&layer.key, &layer.text, std::path::Path::new("/"))
            .map_err(|e| e.to_string())?;
        parsed.push(host);
    }
    let desired = merge::merge(&parsed);
    let report = apply::apply(
        &desired,
        ApplyOptions {
            force,
            ..ApplyOptions::default()
        },
    )
    .map_err(|e| e.to_string())?;
    Ok(if report.is_noop() {
        "unchanged"
    } else {
        "applied"
    })
}

fn applied_layer(layer: &Layer) -> AppliedLayer {
    AppliedLayer {
        key: layer.key.clone(),
        id: layer.manifest.id.clone(),
        mod_revision: layer.mod_revision,
        source: layer.manifest.source.clone(),
    }
}

/// Frames by action over every interface xdpkit runs here, and their names.
fn summary() -> (BTreeMap<String, u64>, Vec<String>) {
    let mut counters = BTreeMap::new();
    let mut names = Vec::new();
    for iface in crate::status::status(None, Duration::ZERO).unwrap_or_default() {
        if iface.state != "attached" {
            continue;
        }
        for a in &iface.actions {
            *counters.entry(a.action.to_string()).or_insert(0) += a.packets;
        }
        names.push(iface.iface);
    }
    (counters, names)
}

fn load_state(path: &std::path::Path) -> Option<AgentStatus> {
    let text = std::fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

fn save_state(path: &std::path::Path, status: &AgentStatus) {
    let write = || -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(status).unwrap_or_default())?;
        std::fs::rename(&tmp, path)
    };
    if let Err(e) = write() {
        tracing::warn!("cannot save the agent's state to {}: {e}", path.display());
    }
}
