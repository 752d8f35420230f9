//! What an agent reports under `/xdpkit/status/<NAME>` (the agent writes
//! it; `fleet status` and the store's garbage collection read it).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One layer as applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedLayer {
    /// Its key.
    pub key: String,
    /// Its content id.
    pub id: String,
    /// The store revision that wrote it.
    pub mod_revision: i64,
    /// The file it was pushed from.
    pub source: String,
}

/// What an agent reports under `/xdpkit/status/<NAME>`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// The host.
    pub host: String,
    /// Its groups.
    pub groups: Vec<String>,
    /// The store revision of the last read.
    pub revision: i64,
    /// The layers running (the last good configuration).
    pub layers: Vec<AppliedLayer>,
    /// When they were applied, seconds since the epoch.
    pub applied_at: u64,
    /// `applied`, `unchanged` (what runs already matched) or `error`.
    pub outcome: String,
    /// Why the newest layers were not applied, if they were not.
    pub error: Option<String>,
    /// The newest layers seen (equal to `layers` unless `error`).
    pub seen: Vec<AppliedLayer>,
    /// Frames by action over every interface xdpkit runs here.
    pub counters: BTreeMap<String, u64>,
    /// Interfaces xdpkit runs here.
    pub interfaces: Vec<String>,
    /// When the status was written, seconds since the epoch.
    pub updated_at: u64,
    /// The agent's sessions with the store so far (1: never lost it).
    pub sessions: u64,
}
