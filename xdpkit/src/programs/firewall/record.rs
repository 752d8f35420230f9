//! Rules as stored in the pinned `FW_RULES` map (and, for general rules,
//! `FW_GEN_RECORDS`), so any process can read the ruleset back.
//!
//! A prefix rule (one `src` or `dst` prefix, nothing else: nearly all of a
//! large ruleset) fits a 40-byte [`RuleRecord`]. A general rule's
//! [`RuleRecord`] is marked [`REC_GENERAL`] and its fields are in an 80-byte
//! [`GeneralRecord`] of the same id and `seq`.

use std::net::IpAddr;

use ipnet::IpNet;
use xdpkit_common::firewall::{
    GeneralRecord, RuleRecord, ACTION_ALLOW, ACTION_DENY, ACTION_RATE_LIMIT, ACTION_TO_USERSPACE,
    REC_DPORT, REC_DST, REC_DST_V6, REC_GENERAL, REC_PROTO, REC_SMAC, REC_SPORT, REC_SRC,
    REC_SRC_V6, REC_USED, REC_VLAN,
};

use super::{rule::is_prefix_rule, Action, PortRange, Rule};

fn put_net(
    net: Option<IpNet>,
    set: u32,
    v6: u32,
    flags: &mut u32,
    bytes: &mut [u8; 16],
    len: &mut u8,
) {
    if let Some(net) = net {
        *flags |= set;
        *len = net.prefix_len();
        match net.addr() {
            IpAddr::V4(a) => bytes[..4].copy_from_slice(&a.octets()),
            IpAddr::V6(a) => {
                *flags |= v6;
                *bytes = a.octets();
            }
        }
    }
}

fn get_net(flags: u32, set: u32, v6: u32, bytes: [u8; 16], len: u8) -> Option<IpNet> {
    if flags & set == 0 {
        return None;
    }
    let addr = if flags & v6 != 0 {
        IpAddr::from(bytes)
    } else {
        IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])
    };
    IpNet::new(addr, len).ok()
}

fn action_code(action: Action) -> (u32, u32) {
    match action {
        Action::Allow => (ACTION_ALLOW, 0),
        Action::Deny => (ACTION_DENY, 0),
        Action::RateLimit(pps) => (ACTION_RATE_LIMIT, pps),
        Action::ToUserspace => (ACTION_TO_USERSPACE, 0),
    }
}

fn action_of(code: u32, pps: u32) -> Option<Action> {
    match code {
        ACTION_ALLOW => Some(Action::Allow),
        ACTION_DENY => Some(Action::Deny),
        ACTION_RATE_LIMIT => Some(Action::RateLimit(pps)),
        ACTION_TO_USERSPACE => Some(Action::ToUserspace),
        _ => None,
    }
}

/// The records of `rule` inserted as number `seq`: its [`RuleRecord`] and,
/// for a general rule, the [`GeneralRecord`] that record points to.
pub fn encode(rule: &Rule, seq: u64) -> (RuleRecord, Option<GeneralRecord>) {
    let (action, pps) = action_code(rule.action);
    let mut r = RuleRecord {
        seq,
        prio: rule.prio,
        pps,
        flags: REC_USED,
        // The action codes fit a byte.
        action: action as u8,
        ..RuleRecord::default()
    };
    if !is_prefix_rule(rule) {
        r.flags |= REC_GENERAL;
        return (r, Some(encode_general(rule, seq)));
    }
    put_net(
        rule.src,
        REC_SRC,
        REC_SRC_V6,
        &mut r.flags,
        &mut r.addr,
        &mut r.len,
    );
    put_net(
        rule.dst,
        REC_DST,
        REC_DST_V6,
        &mut r.flags,
        &mut r.addr,
        &mut r.len,
    );
    (r, None)
}

/// The full record of `rule` inserted as number `seq`.
fn encode_general(rule: &Rule, seq: u64) -> GeneralRecord {
    let (action, pps) = action_code(rule.action);
    let mut r = GeneralRecord {
        seq,
        prio: rule.prio,
        action,
        pps,
        flags: REC_USED,
        ..GeneralRecord::default()
    };
    put_net(
        rule.src,
        REC_SRC,
        REC_SRC_V6,
        &mut r.flags,
        &mut r.src,
        &mut r.src_len,
    );
    put_net(
        rule.dst,
        REC_DST,
        REC_DST_V6,
        &mut r.flags,
        &mut r.dst,
        &mut r.dst_len,
    );
    if let Some(p) = rule.proto {
        r.flags |= REC_PROTO;
        r.proto = p;
    }
    if let Some(p) = rule.sport {
        r.flags |= REC_SPORT;
        r.sport = [p.lo, p.hi];
    }
    if let Some(p) = rule.dport {
        r.flags |= REC_DPORT;
        r.dport = [p.lo, p.hi];
    }
    if let Some(m) = rule.smac {
        r.flags |= REC_SMAC;
        r.smac = m;
    }
    if let Some(v) = rule.vlan {
        r.flags |= REC_VLAN;
        r.vlan = v;
    }
    r
}

/// Why records give no rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Undecoded {
    /// A general rule whose full record is missing or has another `seq`:
    /// a reader racing a writer (the record not yet there, or gone).
    Incomplete,
    /// Bytes no writer of this build makes.
    Damaged,
}

/// The rule a used [`RuleRecord`] holds; `full` is the [`GeneralRecord`]
/// of the same id, if any (needed only for [`REC_GENERAL`]).
pub fn decode(r: &RuleRecord, full: Option<&GeneralRecord>) -> Result<Rule, Undecoded> {
    if r.flags & REC_GENERAL != 0 {
        return match full {
            Some(full) if full.seq == r.seq => decode_general(full).ok_or(Undecoded::Damaged),
            _ => Err(Undecoded::Incomplete),
        };
    }
    let action = action_of(u32::from(r.action), r.pps).ok_or(Undecoded::Damaged)?;
    let rule = Rule {
        action,
        src: get_net(r.flags, REC_SRC, REC_SRC_V6, r.addr, r.len),
        dst: get_net(r.flags, REC_DST, REC_DST_V6, r.addr, r.len),
        proto: None,
        sport: None,
        dport: None,
        smac: None,
        vlan: None,
        prio: r.prio,
    };
    // Exactly one prefix, and a valid one.
    if is_prefix_rule(&rule) {
        Ok(rule)
    } else {
        Err(Undecoded::Damaged)
    }
}

/// The rule a [`GeneralRecord`] holds (None if the record is damaged).
fn decode_general(r: &GeneralRecord) -> Option<Rule> {
    let action = action_of(r.action, r.pps)?;
    let range =
        |bit: u32, p: [u16; 2]| (r.flags & bit != 0).then_some(PortRange { lo: p[0], hi: p[1] });
    Some(Rule {
        action,
        src: get_net(r.flags, REC_SRC, REC_SRC_V6, r.src, r.src_len),
        dst: get_net(r.flags, REC_DST, REC_DST_V6, r.dst, r.dst_len),
        proto: (r.flags & REC_PROTO != 0).then_some(r.proto),
        sport: range(REC_SPORT, r.sport),
        dport: range(REC_DPORT, r.dport),
        smac: (r.flags & REC_SMAC != 0).then_some(r.smac),
        vlan: (r.flags & REC_VLAN != 0).then_some(r.vlan),
        prio: r.prio,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(line: &str) -> Rule {
        line.parse().unwrap_or_else(|e| panic!("{line}: {e}"))
    }

    #[test]
    fn prefix_rules_fit_the_short_record() {
        let mut lines = Vec::new();
        for action in [
            "allow",
            "deny",
            "rate-limit 500",
            "rate-limit 1",
            "to-userspace",
        ] {
            for field in ["src", "dst"] {
                for net in [
                    "198.18.0.0/15",
                    "198.18.7.1",
                    "198.18.7.1/32",
                    "0.0.0.0/0",
                    "2001:db8::/32",
                    "2001:db8::1",
                    "2001:db8::1/128",
                    "::/0",
                    "2001:db8:ffff:ffff:ffff:ffff:ffff:ffff/128",
                ] {
                    lines.push(format!("{action} {field} {net}"));
                    lines.push(format!("{action} {field} {net} prio 4000000000"));
                }
            }
        }
        for line in &lines {
            let rule = rule(line);
            assert!(is_prefix_rule(&rule), "{line}");
            let (rec, full) = encode(&rule, 1 << 40);
            assert!(full.is_none(), "{line} needs no full record");
            assert_eq!(rec.seq, 1 << 40);
            assert_eq!(rec.flags & (REC_USED | REC_GENERAL), REC_USED, "{line}");
            assert_eq!(decode(&rec, None), Ok(rule.clone()), "{line}");
            // A full record of the id does not change what it holds.
            let other = encode_general(&self::rule("deny proto tcp"), 1 << 40);
            assert_eq!(decode(&rec, Some(&other)), Ok(rule), "{line}");
        }
        // What the flags say: field and family.
        let (v4_dst, _) = encode(&rule("deny dst 198.18.0.0/16"), 0);
        assert_eq!(v4_dst.flags, REC_USED | REC_DST);
        assert_eq!((v4_dst.len, &v4_dst.addr[..4]), (16, &[198, 18, 0, 0][..]));
        let (v6_src, _) = encode(&rule("deny src ::/0"), 0);
        assert_eq!(v6_src.flags, REC_USED | REC_SRC | REC_SRC_V6);
        assert_eq!(v6_src.len, 0);
        let (rate, _) = encode(&rule("rate-limit 123456 dst 2001:db8::/48"), 0);
        assert_eq!(u32::from(rate.action), ACTION_RATE_LIMIT);
        assert_eq!(rate.pps, 123_456);
    }

    #[test]
    fn general_rules_keep_a_full_record() {
        for line in [
            "deny src 198.18.0.0/15 dst 198.19.1.1 proto tcp sport 1-2 dport 80 smac 02:00:00:00:00:01 vlan 7 prio 3",
            "deny src 198.18.0.0/15 dst 198.19.1.1",
            "allow src 2001:db8::/32 dst 2001:db8::1/128",
            "rate-limit 500 src 2001:db8::/32 proto udp",
            "rate-limit 7 dport 53",
            "allow dst 2001:db8::1 sport 1024-65535",
            "deny smac 02:00:00:00:00:02",
            "deny vlan 4094",
            "deny proto icmp",
            "allow",
            "deny prio 0",
            "to-userspace proto udp dport 5000",
        ] {
            let rule = rule(line);
            assert!(!is_prefix_rule(&rule), "{line}");
            let (rec, full) = encode(&rule, 42);
            let full = full.unwrap_or_else(|| panic!("{line}: no full record"));
            assert_eq!(rec.seq, 42);
            assert_eq!(full.seq, 42);
            assert_eq!(rec.flags, REC_USED | REC_GENERAL, "{line}");
            assert_eq!(rec.addr, [0; 16], "{line}");
            assert_eq!(decode(&rec, Some(&full)), Ok(rule), "{line}");
            // Without its full record, or with that of another rule that
            // had the id: not there yet (a reader racing a writer).
            assert_eq!(decode(&rec, None), Err(Undecoded::Incomplete), "{line}");
            let stale = GeneralRecord { seq: 41, ..full };
            assert_eq!(
                decode(&rec, Some(&stale)),
                Err(Undecoded::Incomplete),
                "{line}"
            );
        }
    }

    #[test]
    fn damaged_records_are_refused() {
        let (good, _) = encode(&rule("deny src 198.18.0.0/16"), 1);
        let bad_action = RuleRecord { action: 9, ..good };
        assert_eq!(decode(&bad_action, None), Err(Undecoded::Damaged));
        let two_prefixes = RuleRecord {
            flags: good.flags | REC_DST,
            ..good
        };
        assert_eq!(decode(&two_prefixes, None), Err(Undecoded::Damaged));
        let no_prefix = RuleRecord {
            flags: REC_USED,
            ..good
        };
        assert_eq!(decode(&no_prefix, None), Err(Undecoded::Damaged));
        let too_long = RuleRecord { len: 33, ..good };
        assert_eq!(decode(&too_long, None), Err(Undecoded::Damaged));
        let (rec, full) = encode(&rule("deny proto tcp"), 1);
        let full = GeneralRecord {
            action: 9,
            ..full.unwrap()
        };
        assert_eq!(decode(&rec, Some(&full)), Err(Undecoded::Damaged));
    }
}
