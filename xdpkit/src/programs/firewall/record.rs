//! Rules as stored in the pinned `FW_RULES` map, so any process can read
//! the ruleset back.

use std::net::IpAddr;

use ipnet::IpNet;
use xdpkit_common::firewall::{
    RuleRecord, ACTION_ALLOW, ACTION_DENY, ACTION_RATE_LIMIT, REC_DPORT, REC_DST, REC_DST_V6,
    REC_PROTO, REC_SMAC, REC_SPORT, REC_SRC, REC_SRC_V6, REC_USED, REC_VLAN,
};

use super::{Action, PortRange, Rule};

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

/// The record of `rule` inserted as number `seq`.
pub fn encode(rule: &Rule, seq: u64) -> RuleRecord {
    let mut r = RuleRecord {
        seq,
        prio: rule.prio,
        flags: REC_USED,
        ..RuleRecord::default()
    };
    (r.action, r.pps) = match rule.action {
        Action::Allow => (ACTION_ALLOW, 0),
        Action::Deny => (ACTION_DENY, 0),
        Action::RateLimit(pps) => (ACTION_RATE_LIMIT, pps),
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

/// The rule a record holds (None if the record is damaged).
pub fn decode(r: &RuleRecord) -> Option<Rule> {
    let action = match r.action {
        ACTION_ALLOW => Action::Allow,
        ACTION_DENY => Action::Deny,
        ACTION_RATE_LIMIT => Action::RateLimit(r.pps),
        _ => return None,
    };
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

    #[test]
    fn every_field_round_trips() {
        for line in [
            "deny src 198.18.0.0/15 dst 198.19.1.1 proto tcp sport 1-2 dport 80 smac 02:00:00:00:00:01 vlan 7 prio 3",
            "rate-limit 500 src 2001:db8::/32",
            "allow dst 2001:db8::1",
            "allow",
        ] {
            let rule: Rule = line.parse().unwrap();
            let rec = encode(&rule, 42);
            assert_eq!(rec.seq, 42);
            assert_ne!(rec.flags & REC_USED, 0);
            assert_eq!(decode(&rec), Some(rule), "{line}");
        }
    }
}
