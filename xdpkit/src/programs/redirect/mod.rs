//! `redirect`: sends every frame out of another interface (XDP_REDIRECT
//! through a one-slot DEVMAP). Setting: `to`, the egress interface.

pub mod config;

use aya::maps::{DevMap, MapData};
use xdpkit_common::{
    maps::{REDIRECT_MAP, REDIRECT_SLOT},
    XdpAction,
};

use super::{Commit, Program, StageLoad};
use crate::{
    iface,
    model::StageOutcome,
    object::{self, embedded, Object},
    pins::PinDir,
    Error, Result,
};

/// Pin file of the DEVMAP in the stage directory.
pub const PIN: &str = "redirect";

/// The `redirect` program.
pub struct Redirect;

impl Program for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn about(&self) -> &'static str {
        "send every frame out of another interface (setting `to`, or --to)"
    }

    fn object(&self) -> Object {
        embedded!("redirect")
    }

    fn symbol(&self) -> &'static str {
        "xdpkit_redirect"
    }

    fn pinned_maps(&self) -> &'static [(&'static str, &'static str)] {
        &[(REDIRECT_MAP, PIN)]
    }

    fn normalise_settings(
        &self,
        given: Option<&toml::Table>,
        base_dir: &std::path::Path,
    ) -> std::result::Result<toml::Table, crate::settings::SettingsError> {
        match given {
            Some(table) => config::normalise(table, base_dir),
            None => Err(crate::settings::SettingsError::new(
                "to",
                "missing: redirect needs a target; add its settings table with to = \"<interface>\"",
            )),
        }
    }

    fn configure(
        &self,
        stage: &mut StageLoad<'_>,
        settings: &toml::Table,
    ) -> Result<Option<Commit>> {
        // Without a target (only in test harnesses: attach and apply require
        // one) the program passes frames.
        if !settings.contains_key("to") {
            return Ok(None);
        }
        let ifindex = iface::index(target(settings)?)?;
        if stage.fresh {
            object::set_devmap(stage.ebpf, REDIRECT_MAP, REDIRECT_SLOT, ifindex)?;
            return Ok(None);
        }
        // The DEVMAP is shared with the running stage: change it at the switch.
        let dir = stage.dir.clone();
        Ok(Some(Box::new(move || set_running_target(&dir, ifindex))))
    }

    fn running_settings(&self, dir: &PinDir) -> Result<toml::Table> {
        let mut table = toml::Table::new();
        if let Some(ifindex) = running_target(dir)? {
            let name = iface::name(ifindex).unwrap_or_else(|| format!("#{ifindex}"));
            table.insert("to".into(), name.into());
        }
        Ok(table)
    }

    fn model(&self, frame: &[u8], settings: &toml::Table) -> StageOutcome {
        // Without a target the program passes rather than lose the frame.
        let verdict = if settings.contains_key("to") {
            XdpAction::Redirect
        } else {
            XdpAction::Pass
        };
        StageOutcome::verdict(verdict, frame)
    }
}

/// The `to` setting.
fn target(settings: &toml::Table) -> Result<&str> {
    settings.get("to").and_then(|v| v.as_str()).ok_or_else(|| {
        Error::InvalidArgument(
            "the redirect stage needs a target interface: --to <IF> (or `to = \"IF\"` in its settings)"
                .to_string(),
        )
    })
}

/// Points the pinned DEVMAP of the stage in `dir` at `ifindex`.
fn set_running_target(dir: &PinDir, ifindex: u32) -> Result<()> {
    let path = dir.file(PIN);
    let map =
        crate::maps::open_pin(&path)?.ok_or_else(|| crate::maps::missing_map(REDIRECT_MAP))?;
    let mut map = DevMap::<MapData>::try_from(map).map_err(|e| Error::Map {
        what: format!("open {}", path.display()),
        source: e.into(),
    })?;
    map.set(REDIRECT_SLOT, ifindex, None, 0)
        .map_err(|e| Error::Map {
            what: format!("set {} to ifindex {ifindex}", path.display()),
            source: e.into(),
        })
}

/// The ifindex the running stage in `dir` redirects to, if any.
pub fn running_target(dir: &PinDir) -> Result<Option<u32>> {
    let path = dir.file(PIN);
    let Some(map) = crate::maps::open_pin(&path)? else {
        return Ok(None);
    };
    let map = DevMap::<MapData>::try_from(map).map_err(|e| Error::Map {
        what: format!("open {}", path.display()),
        source: e.into(),
    })?;
    match map.get(REDIRECT_SLOT, 0) {
        Ok(value) => Ok(Some(value.if_index)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(Error::Map {
            what: format!("read {}", path.display()),
            source: e.into(),
        }),
    }
}
