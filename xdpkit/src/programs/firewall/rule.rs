//! One firewall rule: the grammar shared by the command line and rule files.
//!
//! `<allow|deny|rate-limit PPS|to-userspace> [src CIDR] [dst CIDR] [proto tcp|udp|icmp|icmpv6|NUM]
//!  [sport P[-Q]] [dport P[-Q]] [smac MAC] [vlan ID] [prio N]`

use std::{fmt, net::IpAddr, str::FromStr};

use ipnet::IpNet;

/// Priority of a rule that names none; lower priorities are judged first.
pub const DEFAULT_PRIO: u32 = 100;

/// IP protocol numbers the grammar names.
pub mod proto {
    /// ICMP.
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
}

/// What a matching rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Pass the frame.
    Allow,
    /// Drop the frame.
    Deny,
    /// Pass up to this many packets per second per source address, drop the rest.
    RateLimit(u32),
    /// Redirect the frame into the AF_XDP socket bound to the RX queue it
    /// arrived on (the interface's XSKMAP, `xdpkit_common::xsk`). When that
    /// queue has no socket the frame goes on down the chain as `allow`
    /// would send it (counted as outcome `no_socket`), so a rule may be set
    /// before its socket is opened and outlive it.
    ToUserspace,
}

/// An inclusive port range; a single port is `lo == hi`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortRange {
    /// Whether `port` is in the range.
    pub fn contains(&self, port: u16) -> bool {
        (self.lo..=self.hi).contains(&port)
    }
}

/// A parsed rule. Absent fields match anything.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Rule {
    /// What to do on a match.
    pub action: Action,
    /// Source prefix.
    pub src: Option<IpNet>,
    /// Destination prefix.
    pub dst: Option<IpNet>,
    /// IP protocol number (IPv4 protocol, or the IPv6 header after extensions).
    pub proto: Option<u8>,
    /// Source ports (TCP or UDP).
    pub sport: Option<PortRange>,
    /// Destination ports (TCP or UDP).
    pub dport: Option<PortRange>,
    /// Source MAC address.
    pub smac: Option<[u8; 6]>,
    /// Outer VLAN id.
    pub vlan: Option<u16>,
    /// Order: lower first.
    pub prio: u32,
}

/// Why a rule does not parse. Messages name the token and the fix.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    /// Nothing but whitespace or a comment.
    #[error("empty rule: start with allow, deny, rate-limit PPS or to-userspace")]
    Empty,
    /// The first word is not an action.
    #[error("unknown action '{0}': start with allow, deny, rate-limit PPS or to-userspace")]
    UnknownAction(String),
    /// A keyword the grammar lacks.
    #[error("unknown keyword '{0}': expected src, dst, proto, sport, dport, smac, vlan or prio")]
    UnknownKeyword(String),
    /// A keyword without its value.
    #[error("'{0}' needs a value")]
    MissingValue(&'static str),
    /// A keyword given twice.
    #[error("'{0}' given twice")]
    Duplicate(&'static str),
    /// A value that does not parse.
    #[error("bad {what} '{value}': {hint}")]
    BadValue {
        /// Which keyword.
        what: &'static str,
        /// The value given.
        value: String,
        /// What a good value looks like.
        hint: String,
    },
    /// Fields that cannot hold together.
    #[error("{0}")]
    Conflict(String),
}

fn bad(what: &'static str, value: &str, hint: impl Into<String>) -> RuleError {
    RuleError::BadValue {
        what,
        value: value.to_string(),
        hint: hint.into(),
    }
}

fn parse_prefix(what: &'static str, value: &str) -> Result<IpNet, RuleError> {
    let net = if value.contains('/') {
        value.parse::<IpNet>().map_err(|_| {
            bad(
                what,
                value,
                "expected an address or CIDR such as 198.18.0.0/15 or 2001:db8::/32",
            )
        })?
    } else {
        let addr: IpAddr = value.parse().map_err(|_| {
            bad(
                what,
                value,
                "expected an address or CIDR such as 198.18.0.0/15 or 2001:db8::/32",
            )
        })?;
        IpNet::from(addr)
    };
    if net.trunc() != net {
        return Err(bad(
            what,
            value,
            format!("host bits are set; did you mean {}?", net.trunc()),
        ));
    }
    Ok(net)
}

fn parse_proto(value: &str) -> Result<u8, RuleError> {
    match value {
        "tcp" => Ok(proto::TCP),
        "udp" => Ok(proto::UDP),
        "icmp" => Ok(proto::ICMP),
        "icmpv6" => Ok(proto::ICMPV6),
        n => n.parse::<u8>().map_err(|_| {
            bad(
                "proto",
                value,
                "expected tcp, udp, icmp, icmpv6 or a number 0-255",
            )
        }),
    }
}

fn parse_ports(what: &'static str, value: &str) -> Result<PortRange, RuleError> {
    let hint = "expected a port or a range such as 80 or 1024-65535";
    let port = |s: &str| s.parse::<u16>().map_err(|_| bad(what, value, hint));
    let range = match value.split_once('-') {
        Some((lo, hi)) => PortRange {
            lo: port(lo)?,
            hi: port(hi)?,
        },
        None => {
            let p = port(value)?;
            PortRange { lo: p, hi: p }
        }
    };
    if range.lo > range.hi {
        return Err(bad(
            what,
            value,
            format!(
                "the range is reversed; did you mean {}-{}?",
                range.hi, range.lo
            ),
        ));
    }
    Ok(range)
}

fn parse_mac(value: &str) -> Result<[u8; 6], RuleError> {
    crate::iface::parse_mac(value).ok_or_else(|| {
        bad(
            "smac",
            value,
            "expected six hex bytes such as 02:00:00:00:00:01",
        )
    })
}

impl FromStr for Rule {
    type Err = RuleError;

    /// Parses one rule; a `#` starts a comment.
    fn from_str(line: &str) -> Result<Rule, RuleError> {
        let line = line.split('#').next().unwrap_or_default();
        let mut words = line.split_whitespace();
        let action = match words.next() {
            None => return Err(RuleError::Empty),
            Some("allow") => Action::Allow,
            Some("deny") => Action::Deny,
            Some("to-userspace") => Action::ToUserspace,
            Some("rate-limit") => {
                let pps = words.next().ok_or(RuleError::MissingValue("rate-limit"))?;
                match pps.parse::<u32>() {
                    Ok(n) if n >= 1 => Action::RateLimit(n),
                    _ => {
                        return Err(bad(
                            "rate-limit",
                            pps,
                            "expected packets per second, 1 to 4294967295",
                        ))
                    }
                }
            }
            Some(other) => return Err(RuleError::UnknownAction(other.to_string())),
        };
        let mut rule = Rule {
            action,
            src: None,
            dst: None,
            proto: None,
            sport: None,
            dport: None,
            smac: None,
            vlan: None,
            prio: DEFAULT_PRIO,
        };
        let mut seen_prio = false;
        while let Some(keyword) = words.next() {
            let key: &'static str = match keyword {
                "src" => "src",
                "dst" => "dst",
                "proto" => "proto",
                "sport" => "sport",
                "dport" => "dport",
                "smac" => "smac",
                "vlan" => "vlan",
                "prio" => "prio",
                other => return Err(RuleError::UnknownKeyword(other.to_string())),
            };
            let value = words.next().ok_or(RuleError::MissingValue(key))?;
            let duplicate = match key {
                "src" => rule.src.replace(parse_prefix(key, value)?).is_some(),
                "dst" => rule.dst.replace(parse_prefix(key, value)?).is_some(),
                "proto" => rule.proto.replace(parse_proto(value)?).is_some(),
                "sport" => rule.sport.replace(parse_ports(key, value)?).is_some(),
                "dport" => rule.dport.replace(parse_ports(key, value)?).is_some(),
                "smac" => rule.smac.replace(parse_mac(value)?).is_some(),
                "vlan" => {
                    let id = value
                        .parse::<u16>()
                        .ok()
                        .filter(|id| *id <= 4095)
                        .ok_or_else(|| bad("vlan", value, "expected a VLAN id 0-4095"))?;
                    rule.vlan.replace(id).is_some()
                }
                _ => {
                    rule.prio = value.parse().map_err(|_| {
                        bad(
                            "prio",
                            value,
                            "expected a number 0-4294967295 (lower is judged first)",
                        )
                    })?;
                    std::mem::replace(&mut seen_prio, true)
                }
            };
            if duplicate {
                return Err(RuleError::Duplicate(key));
            }
        }
        rule.check()?;
        Ok(rule)
    }
}

impl Rule {
    fn check(&self) -> Result<(), RuleError> {
        if let (Some(src), Some(dst)) = (self.src, self.dst) {
            if src.addr().is_ipv4() != dst.addr().is_ipv4() {
                return Err(RuleError::Conflict(format!(
                    "src {src} and dst {dst} are different address families: write one rule per family"
                )));
            }
        }
        let has_ports = self.sport.is_some() || self.dport.is_some();
        if let Some(p) = self
            .proto
            .filter(|p| has_ports && *p != proto::TCP && *p != proto::UDP)
        {
            return Err(RuleError::Conflict(format!(
                "ports need proto tcp or udp, not {}: drop sport/dport or change proto",
                proto_name(p)
            )));
        }
        Ok(())
    }

    /// True if the rule can only match TCP or UDP (it names ports).
    pub fn needs_ports(&self) -> bool {
        self.sport.is_some() || self.dport.is_some()
    }

    /// True if the rule needs a layer-4 header to decide (ports).
    pub fn uses_l4(&self) -> bool {
        self.needs_ports()
    }
}

/// `tcp`, `udp`, `icmp`, `icmpv6` or the number.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".to_string(),
        proto::UDP => "udp".to_string(),
        proto::ICMP => "icmp".to_string(),
        proto::ICMPV6 => "icmpv6".to_string(),
        n => n.to_string(),
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

impl fmt::Display for Rule {
    /// The canonical form: parsing it gives the same rule.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            Action::Allow => write!(f, "allow")?,
            Action::Deny => write!(f, "deny")?,
            Action::RateLimit(pps) => write!(f, "rate-limit {pps}")?,
            Action::ToUserspace => write!(f, "to-userspace")?,
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if let Some(dst) = self.dst {
            write!(f, " dst {dst}")?;
        }
        if let Some(p) = self.proto {
            write!(f, " proto {}", proto_name(p))?;
        }
        if let Some(p) = self.sport {
            write!(f, " sport {p}")?;
        }
        if let Some(p) = self.dport {
            write!(f, " dport {p}")?;
        }
        if let Some(m) = self.smac {
            write!(
                f,
                " smac {:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
                m[0], m[1], m[2], m[3], m[4], m[5]
            )?;
        }
        if let Some(v) = self.vlan {
            write!(f, " vlan {v}")?;
        }
        write!(f, " prio {}", self.prio)
    }
}

/// Whether the kernel program handles `rule` in this stage (a prefix rule).
pub fn is_prefix_rule(rule: &Rule) -> bool {
    let only_prefix = rule.proto.is_none()
        && rule.sport.is_none()
        && rule.dport.is_none()
        && rule.smac.is_none()
        && rule.vlan.is_none();
    only_prefix && (rule.src.is_some() != rule.dst.is_some())
}

/// Which prefix table a prefix rule lives in: 0 src4, 1 dst4, 2 src6, 3 dst6.
pub fn prefix_field(rule: &Rule) -> Option<(usize, IpNet)> {
    if !is_prefix_rule(rule) {
        return None;
    }
    let (net, is_src) = match (rule.src, rule.dst) {
        (Some(net), None) => (net, true),
        (None, Some(net)) => (net, false),
        _ => return None,
    };
    let field = match (is_src, net) {
        (true, IpNet::V4(_)) => 0,
        (false, IpNet::V4(_)) => 1,
        (true, IpNet::V6(_)) => 2,
        (false, IpNet::V6(_)) => 3,
    };
    Some((field, net))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> Rule {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_every_field_and_prints_canonically() {
        let r = rule("deny src 198.18.0.0/16 dst 198.19.1.1 proto tcp sport 1024-65535 dport 80 smac 02:00:00:00:00:01 vlan 42 prio 7");
        assert_eq!(r.action, Action::Deny);
        assert_eq!(r.dst.unwrap().prefix_len(), 32, "bare address is /32");
        assert_eq!(
            r.sport,
            Some(PortRange {
                lo: 1024,
                hi: 65535
            })
        );
        assert_eq!(
            r.to_string(),
            "deny src 198.18.0.0/16 dst 198.19.1.1/32 proto tcp sport 1024-65535 dport 80 smac 02:00:00:00:00:01 vlan 42 prio 7"
        );
        assert_eq!(rule(&r.to_string()), r, "canonical form round-trips");
    }

    #[test]
    fn defaults_comments_and_ipv6() {
        let r = rule("  rate-limit 1000 src 2001:db8::1   # noisy host");
        assert_eq!(r.action, Action::RateLimit(1000));
        assert_eq!(r.src.unwrap().prefix_len(), 128);
        assert_eq!(r.prio, DEFAULT_PRIO);
        assert_eq!(
            r.to_string(),
            "rate-limit 1000 src 2001:db8::1/128 prio 100"
        );
        assert_eq!(rule("allow").to_string(), "allow prio 100");
    }

    #[test]
    fn errors_name_the_problem_and_the_fix() {
        let cases = [
            ("", "empty rule"),
            ("# only a comment", "empty rule"),
            ("block src 198.18.0.1", "unknown action 'block'"),
            ("deny from 198.18.0.1", "unknown keyword 'from'"),
            ("deny src", "'src' needs a value"),
            ("deny src 198.18.0.1/16", "did you mean 198.18.0.0/16?"),
            ("deny src 198.18.0.300", "bad src '198.18.0.300'"),
            (
                "deny src 198.18.0.0/15 dst 2001:db8::/32",
                "different address families",
            ),
            (
                "deny proto icmp dport 80",
                "ports need proto tcp or udp, not icmp",
            ),
            ("deny dport 90-80", "did you mean 80-90?"),
            ("deny dport 65536", "bad dport"),
            ("deny vlan 4096", "VLAN id 0-4095"),
            ("deny smac 02:00:00:00:00", "six hex bytes"),
            ("deny proto sctpx", "tcp, udp, icmp, icmpv6 or a number"),
            ("deny prio 1 prio 2", "'prio' given twice"),
            ("deny src 198.18.0.1 src 198.18.0.2", "'src' given twice"),
            ("rate-limit src 198.18.0.1", "bad rate-limit 'src'"),
            ("rate-limit 0", "bad rate-limit '0'"),
        ];
        for (line, want) in cases {
            let err = line.parse::<Rule>().unwrap_err().to_string();
            assert!(err.contains(want), "{line:?}: {err:?} lacks {want:?}");
        }
    }

    #[test]
    fn to_userspace_parses_and_round_trips() {
        let r = rule("to-userspace proto udp dport 5000 prio 5");
        assert_eq!(r.action, Action::ToUserspace);
        assert_eq!(r.to_string(), "to-userspace proto udp dport 5000 prio 5");
        assert_eq!(rule(&r.to_string()), r);
        assert_eq!(
            rule("to-userspace dst 198.18.0.0/15").to_string(),
            "to-userspace dst 198.18.0.0/15 prio 100"
        );
        let err = "to-userspace 5".parse::<Rule>().unwrap_err().to_string();
        assert!(err.contains("unknown keyword '5'"), "{err}");
        let err = "redirect".parse::<Rule>().unwrap_err().to_string();
        assert!(err.contains("or to-userspace"), "{err}");
    }

    #[test]
    fn ports_without_proto_mean_tcp_or_udp() {
        let r = rule("deny dport 53");
        assert!(r.needs_ports() && r.proto.is_none());
        rule("deny proto udp dport 53");
        rule("deny proto 6 dport 53");
    }
}
