//! `balancer`: an L4 load balancer in the manner of Katran (issue 11, in
//! progress). TCP and UDP frames to a VIP go to one of its reals, chosen by
//! a flow table or the VIP's Maglev ring ([`maglev`]), encapsulated toward
//! the real (IPIP, IPv4 in IPv6, ip6ip6, or GUE) and sent back out
//! (`XDP_TX`) or out of a second interface (`XDP_REDIRECT`); frames too big
//! for the path once encapsulated get ICMP "too big" back; every other
//! frame goes on down the chain. The VIPs and reals are in the
//! stage's pinned maps ([`tables`], [`write_tables`]); without VIPs the
//! stage hands every frame on.

pub mod config;
pub mod counters;
pub mod error;
pub mod flows;
pub mod live;
pub mod maglev;
pub mod model;
pub mod simulate;
pub mod tables;

pub use xdpkit_common::balancer::{PROTO_TCP, PROTO_UDP, VIP_NO_FLOWS, VIP_QUIC};

use xdpkit_common::balancer::{
    Real, Vip, VipKey, LB_CONFIG, LB_EGRESS, LB_FLOWS, LB_FLOWS4, LB_GUARD, LB_MEMBERS,
    LB_OUTCOMES, LB_QUIC_IDS, LB_REALS, LB_REAL_STATS, LB_RINGS, LB_VIPS, LB_VIP_RECORDS,
    LB_VIP_STATS,
};

use super::{Commit, OutcomeCount, Program, StageLoad};
use crate::{
    maps::{batch, MapSource},
    model::{Decision, StageOutcome},
    object::{embedded, Object},
    pins::PinDir,
    settings::SettingsError,
    Result,
};

/// Its frames by outcome ([`xdpkit_common::balancer::LbOutcome`] order):
/// `flow_miss` counts new flows (and SYNs), so `top` shows their rate.
const OUTCOME_NAMES: [&str; xdpkit_common::balancer::LbOutcome::COUNT as usize] = [
    "not_vip",
    "flow_hit",
    "flow_miss",
    "no_real",
    "encap_failed",
    "too_big",
    "guarded",
    "quic_routed",
];

/// The `balancer` program.
pub struct Balancer;

/// Its maps and their pin files: the VIPs, reals, rings, flows and
/// counters outlive a reload.
static PINS: [(&str, &str); 14] = [
    (LB_VIPS, "lb_vips"),
    (LB_RINGS, "lb_rings"),
    (LB_REALS, "lb_reals"),
    (LB_FLOWS, "lb_flows"),
    (LB_FLOWS4, "lb_flows4"),
    (LB_VIP_STATS, "lb_vip_stats"),
    (LB_REAL_STATS, "lb_real_stats"),
    (LB_OUTCOMES, "lb_outcomes"),
    (LB_CONFIG, "lb_config"),
    (LB_VIP_RECORDS, "lb_vip_records"),
    (LB_MEMBERS, "lb_members"),
    (LB_EGRESS, "lb_egress"),
    (LB_GUARD, "lb_guard"),
    (LB_QUIC_IDS, "lb_quic_ids"),
];

impl Program for Balancer {
    fn name(&self) -> &'static str {
        "balancer"
    }

    fn about(&self) -> &'static str {
        "L4 load balancer: frames to a VIP go to a real (Maglev), encapsulated, back out"
    }

    fn object(&self) -> Object {
        embedded!("balancer")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_balancer"
    }

    fn pinned_maps(&self) -> &'static [(&'static str, &'static str)] {
        &PINS
    }

    fn reads_rx_hash(&self) -> bool {
        true
    }

    fn outcomes(&self, dir: &PinDir) -> Vec<OutcomeCount> {
        let Ok(totals) = live::maps_in(dir).and_then(|maps| counters::read(&maps)) else {
            return Vec::new();
        };
        OUTCOME_NAMES
            .iter()
            .zip(totals)
            .map(|(outcome, c)| OutcomeCount {
                outcome,
                packets: c.packets,
                bytes: c.bytes,
            })
            .collect()
    }

    fn normalise_settings(
        &self,
        given: Option<&toml::Table>,
        base_dir: &std::path::Path,
    ) -> std::result::Result<toml::Table, SettingsError> {
        let _ = base_dir;
        config::normalise(given.unwrap_or(&toml::Table::new()))
    }

    fn configure(
        &self,
        stage: &mut StageLoad<'_>,
        settings: &toml::Table,
    ) -> Result<Option<Commit>> {
        // `attach` gives no settings: the VIPs stay as `xdpkit lb` left
        // them. `apply` gives the whole declaration.
        if settings.is_empty() {
            return Ok(None);
        }
        let want = config::parse(settings)
            .map_err(|e| crate::Error::InvalidArgument(format!("balancer settings: {e}")))?;
        let mut live = live::LiveBalancer::open_in(stage.iface, stage.dir, stage.lock.share()?)?;
        // Checked now, while nothing has changed.
        let plan = live.plan(&want)?;
        if plan.is_empty() {
            return Ok(None);
        }
        if stage.fresh {
            // New maps: nothing runs on them yet.
            live.sync(&plan)?;
            return Ok(None);
        }
        // The maps are the running stage's: change them at the switch.
        Ok(Some(Box::new(move || live.sync(&plan))))
    }

    fn list_names(&self, key: &str) -> Option<usize> {
        // `VIP ring N ...`; `VIP REAL weight W`.
        match key {
            "vips" => Some(1),
            "reals" => Some(2),
            _ => None,
        }
    }

    fn running_settings(&self, dir: &PinDir) -> Result<toml::Table> {
        Ok(config::to_table(&live::declared_in(dir)?))
    }

    fn model(&self, frame: &[u8], settings: &toml::Table) -> StageOutcome {
        // The declared VIPs, a flow table of this frame alone. Settings
        // that do not parse or fit (never normalised ones) balance nothing.
        let Ok(d) = config::parse(settings) else {
            return StageOutcome::same(Decision::Next, frame);
        };
        match tables::build(d.config, &d.vips) {
            Ok(t) => model::decide(&t, &mut model::Flows::new(), frame).outcome,
            Err(_) => StageOutcome::same(Decision::Next, frame),
        }
    }
}

/// Writes `ring` into `LB_RINGS` from slot `base` on.
pub(crate) fn write_ring(maps: &impl MapSource, base: u32, ring: &[u32]) -> Result<()> {
    let keys: Vec<u32> = (base..base + ring.len() as u32).collect();
    batch::update(maps, LB_RINGS, &keys, ring)
}

/// Sets `LB_QUIC_IDS` to `ids` (server id -> real index); other ids name
/// no real.
pub(crate) fn write_quic_ids(
    maps: &impl MapSource,
    ids: &std::collections::HashMap<u16, u32>,
) -> Result<()> {
    let mut slots = vec![0u32; xdpkit_common::balancer::LB_MAX_QUIC_IDS as usize];
    for (id, real) in ids {
        slots[usize::from(*id)] = real + 1;
    }
    batch::write_array(maps, LB_QUIC_IDS, &slots)
}

/// Writes `t` into a balancer's maps: settings, reals and rings first,
/// then the VIPs that point at them; VIPs not in `t` are removed.
pub fn write_tables(maps: &mut impl MapSource, t: &tables::Tables) -> Result<()> {
    batch::write_array(maps, LB_CONFIG, &[t.config])?;
    batch::write_array::<Real>(maps, LB_REALS, &t.reals)?;
    for (base, ring) in &t.rings {
        write_ring(maps, *base, ring)?;
    }
    write_quic_ids(maps, &t.quic_ids)?;
    if let Some(ifindex) = t.egress {
        let map = maps
            .map_mut(LB_EGRESS)
            .ok_or_else(|| crate::maps::missing_map(LB_EGRESS))?;
        let mut devmap = aya::maps::DevMap::try_from(map).map_err(|e| crate::Error::Map {
            what: format!("open {LB_EGRESS}"),
            source: e.into(),
        })?;
        devmap
            .set(0, ifindex, None, 0)
            .map_err(|e| crate::Error::Map {
                what: format!("set {LB_EGRESS} to ifindex {ifindex}"),
                source: e.into(),
            })?;
    }
    let (keys, values): (Vec<VipKey>, Vec<Vip>) = t.vips.iter().map(|(k, v)| (*k, *v)).unzip();
    if !keys.is_empty() {
        batch::update(maps, LB_VIPS, &keys, &values)?;
    }
    let stale: Vec<VipKey> = batch::dump::<VipKey, Vip>(maps, LB_VIPS, usize::MAX)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| !t.vips.contains_key(k))
        .collect();
    if !stale.is_empty() {
        batch::delete(maps, LB_VIPS, &stale)?;
    }
    Ok(())
}
