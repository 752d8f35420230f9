//! The balancer stage's settings in a host configuration file: its VIPs,
//! their reals and the `lb config` settings, one line per VIP and per real
//! as `xdpkit lb vip add` and `xdpkit lb real add` take them.
//!
//! ```toml
//! [interfaces.eth0.balancer]
//! source4 = "198.19.0.0/16"       # outer IPv4 sources, /16 to /32 (default 0.0.0.0/32)
//! source6 = "2001:db8:ff::/64"    # outer IPv6 sources, a /64 (default ::/64)
//! gateway = "02:00:00:00:00:01"   # next hop's MAC (default 00:00:00:00:00:00: back to the sender)
//! encap = "gue"                   # "ip" (default) or "gue"
//! gue-port = 6080                 # GUE's UDP port (default 6080)
//! mtu = 1500                      # path MTU toward the reals (default 0: no check)
//! egress = "eth1"                 # two-interface mode (default: none, back out of eth0)
//! max-new-per-sec = 100000        # new-flow guard (default 0: no limit)
//! flow-hash = "tuple"             # "auto" (default: the driver's RX hash where there is one) or "tuple"
//! quic-ids = ["1025 198.18.2.1"]  # QUIC server id -> real (a real of some VIP)
//! vips = [
//!   "198.18.1.10:80/tcp",                          # ring 65537 by default
//!   "[2001:db8::10]:53/udp ring 1009 no-flows",
//!   "198.18.1.11:443/udp quic",
//! ]
//! reals = [
//!   "198.18.1.10:80/tcp 198.18.2.1",               # weight 1 by default
//!   "198.18.1.10:80/tcp 198.18.2.2 weight 3",
//!   "198.18.1.10:80/tcp 2001:db8:2::1 weight 0",   # drained
//! ]
//! ```
//!
//! Normalised, the table has every key, `vips` and `reals` in canonical
//! form (`ring N` and `weight W` always written) and sorted (VIPs by
//! address, port and protocol; reals by VIP, then address): the order of
//! lines means nothing to the balancer, so a reordered file is the same
//! configuration, and the running state exports the same table.

use std::{cmp::Ordering, collections::HashMap, collections::HashSet, net::IpAddr};

use ipnet::{Ipv4Net, Ipv6Net};
use toml::{Table, Value};
use xdpkit_common::balancer::{
    LbConfig, VipKey, ENCAP_GUE, ENCAP_IP, GUE_PORT, LB_MAX_MEMBERS, LB_MAX_REALS, LB_MAX_VIPS,
    LB_RING_SLOTS, PROTO_UDP, VIP_NO_FLOWS, VIP_QUIC,
};

use super::{
    maglev::{self, DEFAULT_RING},
    tables::{describe, parse_vip, RealSpec, VipSpec},
};
use crate::settings::{check_keys, string_of, SettingsError};

const KEYS: &[&str] = &[
    "source4",
    "source6",
    "gateway",
    "encap",
    "gue-port",
    "mtu",
    "egress",
    "max-new-per-sec",
    "flow-hash",
    "quic-ids",
    "vips",
    "reals",
];

/// VIP flags by the word a VIP line uses for them, in the order lines print them.
pub const FLAG_WORDS: &[(&str, u32)] = &[("no-flows", VIP_NO_FLOWS), ("quic", VIP_QUIC)];

/// A balancer's whole declaration: settings and VIPs with their reals.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Declared {
    /// Outer sources, gateway, encapsulation, MTU and guard; the egress
    /// fields are zero here (see [`Declared::egress`]).
    pub config: LbConfig,
    /// Two-interface mode's egress interface.
    pub egress: Option<String>,
    /// QUIC server ids and the reals they name, by id.
    pub quic_ids: Vec<(u16, IpAddr)>,
    /// VIPs (sorted as the normalised table lists them), each with its reals.
    pub vips: Vec<VipSpec>,
}

/// The new-flow guard's rate as the kernel keeps it: per CPU, rounded up.
pub fn guard_per_cpu(rate: u64) -> Option<u32> {
    let cpus = crate::sys::possible_cpus().ok()? as u64;
    u32::try_from(rate.div_ceil(cpus)).ok()
}

/// The new-flow guard's rate of `cfg`, over all CPUs.
pub fn guard_rate(cfg: &LbConfig) -> u64 {
    let cpus = crate::sys::possible_cpus().unwrap_or(1) as u64;
    u64::from(cfg.new_per_cpu) * cpus
}

/// How `cfg` hashes new flows: `auto` (the driver's RX hash where the
/// RX-hash root left one, else the 5-tuple) or `tuple`.
pub fn flow_hash_name(cfg: &LbConfig) -> &'static str {
    if cfg.tuple_hash_only != 0 {
        "tuple"
    } else {
        "auto"
    }
}

/// An integer setting from `min` to `max` (absent: `None`).
fn int_of(given: &Table, key: &str, min: i64, max: i64) -> Result<Option<i64>, SettingsError> {
    match given.get(key) {
        None => Ok(None),
        Some(Value::Integer(n)) if (min..=max).contains(n) => Ok(Some(*n)),
        Some(other) => Err(SettingsError::new(
            key,
            format!("expected an integer from {min} to {max}, found {other}"),
        )),
    }
}

/// The outer IPv4 source network of `cfg`.
pub fn source4(cfg: &LbConfig) -> Ipv4Net {
    let bits = cfg.src4_bits.min(32) as u8;
    Ipv4Net::new(cfg.src4.to_ne_bytes().into(), 32 - bits).expect("prefix of at most 32")
}

/// The outer IPv6 source /64 of `cfg`.
pub fn source6(cfg: &LbConfig) -> Ipv6Net {
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&cfg.src6);
    Ipv6Net::new(b.into(), 64).expect("a /64")
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn mac_text(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Checks `net` as the outer IPv4 source network and sets it in `cfg`.
pub fn set_source4(cfg: &mut LbConfig, net: Ipv4Net) -> Result<(), &'static str> {
    if net.prefix_len() < 16 {
        return Err("at most 16 host bits: a /16 to /32");
    }
    cfg.src4 = u32::from_ne_bytes(net.network().octets());
    cfg.src4_bits = 32 - u32::from(net.prefix_len());
    Ok(())
}

/// Checks `net` as the outer IPv6 source network and sets it in `cfg`.
pub fn set_source6(cfg: &mut LbConfig, net: Ipv6Net) -> Result<(), &'static str> {
    if net.prefix_len() != 64 {
        return Err("a /64 (the flow hash fills the rest)");
    }
    cfg.src6.copy_from_slice(&net.network().octets()[..8]);
    Ok(())
}

/// Checks the balancer's settings and returns them normalised (see the
/// module docs).
pub fn normalise(given: &Table) -> Result<Table, SettingsError> {
    Ok(to_table(&parse(given)?))
}

/// The declaration a settings table makes; absent keys are their defaults
/// (no VIPs, no sources, no gateway).
pub fn parse(given: &Table) -> Result<Declared, SettingsError> {
    check_keys(given, KEYS)?;
    let mut config = LbConfig::default();
    if let Some(text) = string_of(given, "source4")? {
        let net: Ipv4Net = text.parse().map_err(|_| {
            SettingsError::new(
                "source4",
                format!("'{text}' is not an IPv4 network (e.g. 198.19.0.0/16)"),
            )
        })?;
        set_source4(&mut config, net).map_err(|why| SettingsError::new("source4", why))?;
        check_network(
            "source4",
            text,
            net.addr() == net.network(),
            &net.trunc().to_string(),
        )?;
    }
    if let Some(text) = string_of(given, "source6")? {
        let net: Ipv6Net = text.parse().map_err(|_| {
            SettingsError::new(
                "source6",
                format!("'{text}' is not an IPv6 network (e.g. 2001:db8:ff::/64)"),
            )
        })?;
        set_source6(&mut config, net).map_err(|why| SettingsError::new("source6", why))?;
        check_network(
            "source6",
            text,
            net.addr() == net.network(),
            &net.trunc().to_string(),
        )?;
    }
    if let Some(text) = string_of(given, "gateway")? {
        config.gateway = crate::iface::parse_mac(text).ok_or_else(|| {
            SettingsError::new(
                "gateway",
                format!("'{text}' is not a MAC address (aa:bb:cc:dd:ee:ff)"),
            )
        })?;
    }
    config.encap = match string_of(given, "encap")? {
        None | Some("ip") => ENCAP_IP,
        Some("gue") => ENCAP_GUE,
        Some(other) => {
            return Err(SettingsError::new(
                "encap",
                format!("'{other}' is not an encapsulation: ip or gue"),
            ))
        }
    };
    config.gue_port = int_of(given, "gue-port", 1, 65535)?.map_or(GUE_PORT, |n| n as u16);
    let mtu = int_of(given, "mtu", 0, 65535)?.unwrap_or(0);
    if mtu != 0 && mtu < 576 {
        return Err(SettingsError::new(
            "mtu",
            format!("{mtu} is below 576, the least every IPv4 path carries (0: no check)"),
        ));
    }
    config.mtu = mtu as u16;
    if let Some(rate) = int_of(given, "max-new-per-sec", 0, i64::from(u32::MAX))? {
        config.new_per_cpu = guard_per_cpu(rate as u64)
            .ok_or_else(|| SettingsError::new("max-new-per-sec", "too many to count"))?;
    }
    config.tuple_hash_only = match string_of(given, "flow-hash")? {
        None | Some("auto") => 0,
        Some("tuple") => 1,
        Some(other) => {
            return Err(SettingsError::new(
                "flow-hash",
                format!("'{other}' is not a flow hash: auto or tuple"),
            ))
        }
    };
    let egress = string_of(given, "egress")?.map(str::to_string);
    if let Some(name) = &egress {
        crate::iface::validate_name(name)
            .map_err(|e| SettingsError::new("egress", e.to_string()))?;
        if config.gateway == [0; 6] {
            return Err(SettingsError::new(
                "egress",
                "two-interface mode sends frames to a next hop on the egress side: set its MAC in gateway",
            ));
        }
    }
    let mut vips: Vec<VipSpec> = Vec::new();
    let mut index: HashMap<VipKey, usize> = HashMap::new();
    for (i, line) in lines(given, "vips")?.into_iter().enumerate() {
        let key = format!("vips[{i}]");
        let vip = parse_vip_line(line).map_err(|m| SettingsError::new(&key, m))?;
        if let Some(&first) = index.get(&vip.key) {
            return Err(SettingsError::new(
                key,
                format!(
                    "VIP {} is already vips[{first}]: declare each VIP once",
                    describe(&vip.key)
                ),
            ));
        }
        if vip.flags & VIP_QUIC != 0 && vip.key.proto != PROTO_UDP {
            return Err(SettingsError::new(
                key,
                format!("quic is for UDP VIPs; {} is TCP", describe(&vip.key)),
            ));
        }
        index.insert(vip.key, i);
        vips.push(vip);
    }
    let mut members = 0usize;
    let mut distinct: HashSet<IpAddr> = HashSet::new();
    for (i, line) in lines(given, "reals")?.into_iter().enumerate() {
        let key = format!("reals[{i}]");
        let (vip, real) = parse_real_line(line).map_err(|m| SettingsError::new(&key, m))?;
        let Some(&at) = index.get(&vip) else {
            return Err(SettingsError::new(
                key,
                format!(
                    "VIP {} is not in vips: declare it there first",
                    describe(&vip)
                ),
            ));
        };
        let reals = &mut vips[at].reals;
        if reals.iter().any(|r| r.addr == real.addr) {
            return Err(SettingsError::new(
                key,
                format!(
                    "{} is already a real of VIP {}: one line per real",
                    real.addr,
                    describe(&vip)
                ),
            ));
        }
        reals.push(real);
        distinct.insert(real.addr);
        members += 1;
    }
    check_room(&vips, members, distinct.len())?;
    sort(&mut vips);
    let mut quic_ids: Vec<(u16, IpAddr)> = Vec::new();
    for (i, line) in lines(given, "quic-ids")?.into_iter().enumerate() {
        let key = format!("quic-ids[{i}]");
        let usage = "write ID REAL, e.g. \"1025 198.18.2.1\"";
        let mut words = line.split_whitespace();
        let (Some(id), Some(real), None) = (words.next(), words.next(), words.next()) else {
            return Err(SettingsError::new(key, usage));
        };
        let id: u16 = id.parse().ok().filter(|id| *id != 0).ok_or_else(|| {
            SettingsError::new(&key, format!("'{id}' is not a server id from 1 to 65535"))
        })?;
        let addr: IpAddr = real.parse().map_err(|_| {
            SettingsError::new(&key, format!("'{real}' is not an IP address: {usage}"))
        })?;
        if !distinct.contains(&addr) {
            return Err(SettingsError::new(
                key,
                format!("{addr} is not a real of any VIP in reals"),
            ));
        }
        if quic_ids.iter().any(|(x, _)| *x == id) {
            return Err(SettingsError::new(
                key,
                format!("server id {id} is declared twice"),
            ));
        }
        quic_ids.push((id, addr));
    }
    quic_ids.sort();
    Ok(Declared {
        config,
        egress,
        quic_ids,
        vips,
    })
}

/// A network with host bits set is refused: the user meant something else.
fn check_network(key: &str, text: &str, clean: bool, meant: &str) -> Result<(), SettingsError> {
    if clean {
        Ok(())
    } else {
        Err(SettingsError::new(
            key,
            format!("'{text}' has host bits set: did you mean {meant}?"),
        ))
    }
}

/// The strings of array `key` (absent: none).
fn lines<'t>(given: &'t Table, key: &str) -> Result<Vec<&'t str>, SettingsError> {
    match given.get(key) {
        None => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                item.as_str().ok_or_else(|| {
                    SettingsError::new(
                        format!("{key}[{i}]"),
                        format!("expected a string, found {}", item.type_str()),
                    )
                })
            })
            .collect(),
        Some(other) => Err(SettingsError::new(
            key,
            format!("expected an array of strings, found {}", other.type_str()),
        )),
    }
}

/// What the maps hold at most, checked before anything is written.
fn check_room(vips: &[VipSpec], members: usize, reals: usize) -> Result<(), SettingsError> {
    if vips.len() > LB_MAX_VIPS as usize {
        return Err(SettingsError::new(
            "vips",
            format!("{} VIPs: at most {LB_MAX_VIPS}", vips.len()),
        ));
    }
    let slots: u64 = vips.iter().map(|v| 2 * u64::from(v.ring)).sum();
    if slots > u64::from(LB_RING_SLOTS) {
        return Err(SettingsError::new(
            "vips",
            format!(
                "the VIPs' rings need {slots} slots (twice their sizes): at most {LB_RING_SLOTS}"
            ),
        ));
    }
    if reals > LB_MAX_REALS as usize {
        return Err(SettingsError::new(
            "reals",
            format!("{reals} distinct reals: at most {LB_MAX_REALS}"),
        ));
    }
    if members > LB_MAX_MEMBERS as usize {
        return Err(SettingsError::new(
            "reals",
            format!("{members} reals of VIPs: at most {LB_MAX_MEMBERS}"),
        ));
    }
    for v in vips {
        let active = v.reals.iter().filter(|r| r.weight > 0).count();
        if active > v.ring as usize {
            return Err(SettingsError::new(
                "reals",
                format!(
                    "VIP {}: {active} reals do not fit its ring of {} slots: choose a larger ring",
                    describe(&v.key),
                    v.ring
                ),
            ));
        }
    }
    Ok(())
}

/// `ADDRESS:PORT/PROTO [ring N] [no-flows]`.
pub fn parse_vip_line(line: &str) -> Result<VipSpec, String> {
    let mut words = line.split_whitespace();
    let first = words
        .next()
        .ok_or("empty: write ADDRESS:PORT/tcp|udp [ring N] [no-flows]")?;
    let key = parse_vip(first).map_err(|e| e.to_string())?;
    let mut spec = VipSpec {
        key,
        ring: DEFAULT_RING,
        flags: 0,
        reals: Vec::new(),
    };
    while let Some(word) = words.next() {
        if word == "ring" {
            let n = words.next().ok_or("ring needs a size (a prime)")?;
            let size: u32 = n
                .parse()
                .map_err(|_| format!("ring size '{n}' is not a number"))?;
            spec.ring = maglev::check_size(size).map_err(|e| e.to_string())?;
        } else if let Some((_, bit)) = FLAG_WORDS.iter().find(|(w, _)| *w == word) {
            spec.flags |= bit;
        } else {
            let flags: Vec<&str> = FLAG_WORDS.iter().map(|(w, _)| *w).collect();
            return Err(format!(
                "unknown word '{word}': after the VIP come ring N and {}",
                flags.join(", ")
            ));
        }
    }
    Ok(spec)
}

/// `VIP REAL [weight W]`.
pub fn parse_real_line(line: &str) -> Result<(VipKey, RealSpec), String> {
    let mut words = line.split_whitespace();
    let usage = "write VIP REAL [weight W], e.g. 198.18.1.10:80/tcp 198.18.2.1 weight 2";
    let vip = words.next().ok_or_else(|| format!("empty: {usage}"))?;
    let vip = parse_vip(vip).map_err(|e| e.to_string())?;
    let real = words
        .next()
        .ok_or_else(|| format!("no real address: {usage}"))?;
    let addr: IpAddr = real
        .parse()
        .map_err(|_| format!("'{real}' is not an IP address: {usage}"))?;
    let mut spec = RealSpec { addr, weight: 1 };
    while let Some(word) = words.next() {
        if word != "weight" {
            return Err(format!("unknown word '{word}': {usage}"));
        }
        let w = words.next().ok_or("weight needs a number (0 drains)")?;
        spec.weight = w
            .parse()
            .map_err(|_| format!("weight '{w}' is not a number from 0 to {}", u32::MAX))?;
    }
    Ok((vip, spec))
}

/// The canonical line of a VIP.
pub fn vip_line(v: &VipSpec) -> String {
    let mut out = format!("{} ring {}", describe(&v.key), v.ring);
    for (word, bit) in FLAG_WORDS {
        if v.flags & bit != 0 {
            out.push(' ');
            out.push_str(word);
        }
    }
    out
}

/// The canonical line of a real of VIP `key`.
pub fn real_line(key: &VipKey, r: &RealSpec) -> String {
    format!("{} {} weight {}", describe(key), r.addr, r.weight)
}

/// VIPs by family, address, port and protocol.
pub fn vip_order(a: &VipKey, b: &VipKey) -> Ordering {
    (a.v6, a.addr, u16::from_be(a.port), a.proto).cmp(&(
        b.v6,
        b.addr,
        u16::from_be(b.port),
        b.proto,
    ))
}

/// Sorts VIPs, and each VIP's reals by address.
pub fn sort(vips: &mut [VipSpec]) {
    vips.sort_by(|a, b| vip_order(&a.key, &b.key));
    for v in vips {
        v.reals.sort_by_key(|r| r.addr);
    }
}

/// The normalised settings table of a declaration.
pub fn to_table(d: &Declared) -> Table {
    let mut vips = d.vips.clone();
    sort(&mut vips);
    let mut out = Table::new();
    out.insert(
        "source4".into(),
        Value::String(source4(&d.config).to_string()),
    );
    out.insert(
        "source6".into(),
        Value::String(source6(&d.config).to_string()),
    );
    out.insert("gateway".into(), Value::String(mac_text(&d.config.gateway)));
    let encap = if d.config.encap == ENCAP_GUE {
        "gue"
    } else {
        "ip"
    };
    out.insert("encap".into(), Value::String(encap.into()));
    out.insert(
        "gue-port".into(),
        Value::Integer(i64::from(d.config.gue_port)),
    );
    out.insert("mtu".into(), Value::Integer(i64::from(d.config.mtu)));
    out.insert(
        "max-new-per-sec".into(),
        Value::Integer(guard_rate(&d.config) as i64),
    );
    out.insert(
        "flow-hash".into(),
        Value::String(flow_hash_name(&d.config).into()),
    );
    if let Some(egress) = &d.egress {
        out.insert("egress".into(), Value::String(egress.clone()));
    }
    let mut ids = d.quic_ids.clone();
    ids.sort();
    out.insert(
        "quic-ids".into(),
        Value::Array(
            ids.iter()
                .map(|(id, addr)| Value::String(format!("{id} {addr}")))
                .collect(),
        ),
    );
    out.insert(
        "vips".into(),
        Value::Array(vips.iter().map(|v| Value::String(vip_line(v))).collect()),
    );
    out.insert(
        "reals".into(),
        Value::Array(
            vips.iter()
                .flat_map(|v| v.reals.iter().map(|r| Value::String(real_line(&v.key, r))))
                .collect(),
        ),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Table {
        text.parse().expect("test TOML")
    }

    fn fails(text: &str, key: &str, want: &str) {
        let e = normalise(&table(text)).expect_err(text);
        assert_eq!(e.key, key, "{e}");
        assert!(e.message.contains(want), "{e} lacks {want:?}");
    }

    #[test]
    fn fills_defaults_and_prints_lines_canonically_and_sorted() {
        let out = normalise(&table(
            r#"
source4 = "198.19.0.0/16"
gateway = "02:AA:00:00:00:01"
vips = ["[2001:db8::10]:53/udp ring 1009 no-flows", "198.18.1.10:80/tcp", "198.18.1.9:80/tcp ring 7"]
reals = [
  "198.18.1.10:80/tcp 198.18.2.2 weight 3",
  "198.18.1.10:80/tcp 198.18.2.1",
  "[2001:db8::10]:53/udp 2001:db8:2::1 weight 0",
]
"#,
        ))
        .unwrap();
        assert_eq!(
            out,
            table(
                r#"
source4 = "198.19.0.0/16"
source6 = "::/64"
gateway = "02:aa:00:00:00:01"
encap = "ip"
gue-port = 6080
mtu = 0
max-new-per-sec = 0
flow-hash = "auto"
quic-ids = []
vips = ["198.18.1.9:80/tcp ring 7", "198.18.1.10:80/tcp ring 65537", "[2001:db8::10]:53/udp ring 1009 no-flows"]
reals = [
  "198.18.1.10:80/tcp 198.18.2.1 weight 1",
  "198.18.1.10:80/tcp 198.18.2.2 weight 3",
  "[2001:db8::10]:53/udp 2001:db8:2::1 weight 0",
]
"#
            )
        );
        let d = parse(&out).unwrap();
        assert_eq!(d.vips[2].flags, VIP_NO_FLOWS);
        // The newer settings, normalised and read back.
        let more = normalise(&table(
            r#"
gateway = "02:00:00:00:00:01"
encap = "gue"
mtu = 1500
egress = "eth1"
quic-ids = ["1025 198.18.2.1"]
vips = ["198.18.1.11:443/udp quic"]
reals = ["198.18.1.11:443/udp 198.18.2.1"]
"#,
        ))
        .unwrap();
        let newer = parse(&more).unwrap();
        assert_eq!(newer.config.encap, ENCAP_GUE);
        assert_eq!(newer.config.mtu, 1500);
        assert_eq!(newer.egress.as_deref(), Some("eth1"));
        assert_eq!(newer.quic_ids, vec![(1025, "198.18.2.1".parse().unwrap())]);
        assert_eq!(newer.vips[0].flags, VIP_QUIC);
        assert_eq!(normalise(&more).unwrap(), more, "normalising is stable");
        assert_eq!(d.vips[1].reals[1].weight, 3);
        assert_eq!(normalise(&out).unwrap(), out, "normalising is stable");
        assert_eq!(
            normalise(&Table::new()).unwrap(),
            table("source4 = \"0.0.0.0/32\"\nsource6 = \"::/64\"\ngateway = \"00:00:00:00:00:00\"\nencap = \"ip\"\ngue-port = 6080\nmtu = 0\nmax-new-per-sec = 0\nflow-hash = \"auto\"\nquic-ids = []\nvips = []\nreals = []")
        );
    }

    #[test]
    fn bad_lines_name_their_index() {
        fails("vips = [\"198.18.1.10:80\"]", "vips[0]", "is not a VIP");
        fails("mtu = 100", "mtu", "below 576");
        fails("encap = \"gre\"", "encap", "ip or gue");
        fails("flow-hash = \"rx\"", "flow-hash", "auto or tuple");
        fails("egress = \"eth1\"", "egress", "gateway");
        fails("vips = [\"198.18.1.10:80/tcp quic\"]", "vips[0]", "UDP");
        fails(
            "vips = [\"198.18.1.10:80/udp\"]\nreals = [\"198.18.1.10:80/udp 198.18.2.1\"]\nquic-ids = [\"7 198.18.2.9\"]",
            "quic-ids[0]",
            "not a real",
        );
        fails(
            "vips = [\"198.18.1.10:80/tcp ring 1000\"]",
            "vips[0]",
            "not a prime",
        );
        fails(
            "vips = [\"198.18.1.10:80/tcp fast\"]",
            "vips[0]",
            "unknown word 'fast'",
        );
        fails(
            "vips = [\"198.18.1.10:80/tcp\", \"198.18.1.10:80/tcp ring 7\"]",
            "vips[1]",
            "already vips[0]",
        );
        fails(
            "vips = [\"198.18.1.10:80/tcp\"]\nreals = [\"198.18.1.10:80/tcp 198.18.2.1\", \"198.18.1.11:80/tcp 198.18.2.1\"]",
            "reals[1]",
            "is not in vips",
        );
        fails(
            "vips = [\"198.18.1.10:80/tcp\"]\nreals = [\"198.18.1.10:80/tcp 198.18.2.1\", \"198.18.1.10:80/tcp 198.18.2.1 weight 2\"]",
            "reals[1]",
            "already a real",
        );
        fails(
            "vips = [\"198.18.1.10:80/tcp\"]\nreals = [\"198.18.1.10:80/tcp 198.18.2.x\"]",
            "reals[0]",
            "not an IP address",
        );
        fails(
            "vips = [\"198.18.1.10:80/tcp\"]\nreals = [\"198.18.1.10:80/tcp 198.18.2.1 weight -1\"]",
            "reals[0]",
            "weight '-1'",
        );
        fails("vips = [3]", "vips[0]", "expected a string");
        fails("reals = \"x\"", "reals", "expected an array");
    }

    #[test]
    fn bad_settings_name_their_key() {
        fails("source4 = \"198.19.0.0/8\"", "source4", "a /16 to /32");
        fails(
            "source4 = \"198.19.0.1/16\"",
            "source4",
            "did you mean 198.19.0.0/16?",
        );
        fails("source6 = \"2001:db8::/48\"", "source6", "a /64");
        fails("source6 = \"x\"", "source6", "not an IPv6 network");
        fails("gateway = \"02:00\"", "gateway", "not a MAC address");
        fails("vip = []", "vip", "unknown key 'vip': expected source4");
    }

    #[test]
    fn room_is_checked() {
        fails(
            "vips = [\"198.18.1.10:80/tcp ring 4194301\"]",
            "vips",
            "at most 4194304",
        );
        let reals: Vec<String> = (1..=8)
            .map(|i| format!("\"198.18.1.10:80/tcp 198.18.2.{i}\""))
            .collect();
        fails(
            &format!(
                "vips = [\"198.18.1.10:80/tcp ring 7\"]\nreals = [{}]",
                reals.join(", ")
            ),
            "reals",
            "do not fit its ring of 7 slots",
        );
    }
}
