//! Reference model of the firewall's decision: what the kernel program must
//! do with every frame, in plain Rust.

use std::{collections::HashMap, net::IpAddr};

use super::{
    frame::{parse, Fragment, IpFrame, Parsed},
    rule::{proto, Action, Rule},
    FragmentPolicy, Policy, Ruleset, Verdict,
};

/// Why the firewall decided as it did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A rule matched (its id is in [`Decision::rule`]).
    Rule,
    /// A rate-limit rule matched and the source had no token left.
    RateLimited,
    /// No rule matched: the default policy.
    Default,
    /// Not IP: the non-IP policy.
    NonIp,
    /// A later fragment under `--fragments allow|deny`.
    Fragment,
    /// Truncated or inconsistent headers: the malformed policy.
    Malformed,
    /// A `to-userspace` rule matched (its id is in [`Decision::rule`]) and
    /// the frame's RX queue has no AF_XDP socket: it goes on down the
    /// chain ([`Verdict::Pass`]). The model knows no sockets, so this is
    /// its answer for every frame such a rule decides; with a socket bound
    /// the kernel redirects the frame instead (outcome `Rule`).
    NoSocket,
}

/// The firewall's decision on one frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Pass or drop.
    pub verdict: Verdict,
    /// The deciding rule, if a rule decided.
    pub rule: Option<u32>,
    /// Why.
    pub reason: Reason,
}

/// One nanotoken per packet-nanosecond: a packet costs a billion of them.
const TOKEN: u64 = 1_000_000_000;

/// Token buckets of `rate-limit` rules, per (rule id, source address).
/// A bucket holds one second's worth (PPS packets) and starts full.
#[derive(Clone, Debug, Default)]
pub struct RateState {
    buckets: HashMap<(u32, IpAddr), (u64, u64)>,
}

impl RateState {
    /// Takes a token for `src` under rule `id` at time `now_ns`; false if none is left.
    pub fn take(&mut self, id: u32, pps: u32, src: IpAddr, now_ns: u64) -> bool {
        let capacity = u64::from(pps) * TOKEN;
        let (credit, last) = self.buckets.entry((id, src)).or_insert((capacity, now_ns));
        // A second refills the bucket, so longer gaps need not be multiplied.
        let elapsed = now_ns.saturating_sub(*last).min(TOKEN);
        *credit = (*credit + elapsed * u64::from(pps)).min(capacity);
        *last = now_ns;
        if *credit >= TOKEN {
            *credit -= TOKEN;
            true
        } else {
            false
        }
    }

    /// The bucket of `src` under rule `id` as (credit in nanotokens, time of
    /// the last take), the kernel's `Bucket`; `None` before the first take.
    pub fn bucket(&self, id: u32, src: IpAddr) -> Option<(u64, u64)> {
        self.buckets.get(&(id, src)).copied()
    }
}

/// Whether `rule` matches `ip` (a later fragment under `l3` only reaches
/// rules without layer-4 fields).
pub fn matches(rule: &Rule, ip: &IpFrame) -> bool {
    let in_net = |net: Option<ipnet::IpNet>, addr: IpAddr| net.is_none_or(|n| n.contains(&addr));
    if rule.vlan.is_some_and(|v| ip.vlan != Some(v))
        || rule.smac.is_some_and(|m| m != ip.smac)
        || !in_net(rule.src, ip.src)
        || !in_net(rule.dst, ip.dst)
        || rule.proto.is_some_and(|p| p != ip.proto)
    {
        return false;
    }
    if rule.needs_ports() {
        if ip.proto != proto::TCP && ip.proto != proto::UDP {
            return false;
        }
        let Some((sport, dport)) = ip.ports else {
            return false;
        };
        if rule.sport.is_some_and(|r| !r.contains(sport))
            || rule.dport.is_some_and(|r| !r.contains(dport))
        {
            return false;
        }
    }
    true
}

/// Judges `frame` against `rules` under `policy`; rate-limit rules consume
/// tokens from `rate` at time `now_ns`. No AF_XDP socket is bound: a
/// `to-userspace` rule's frame passes on ([`Reason::NoSocket`]).
pub fn decide(
    rules: &Ruleset,
    policy: &Policy,
    frame: &[u8],
    rate: &mut RateState,
    now_ns: u64,
) -> Decision {
    let by_policy = |verdict, reason| Decision {
        verdict,
        rule: None,
        reason,
    };
    let ip = match parse(frame) {
        Parsed::Ip(ip) => ip,
        Parsed::NonIp => return by_policy(policy.non_ip, Reason::NonIp),
        Parsed::Malformed(_) => return by_policy(policy.malformed, Reason::Malformed),
    };
    if ip.fragment == Fragment::Later {
        match policy.fragments {
            FragmentPolicy::Allow => return by_policy(Verdict::Pass, Reason::Fragment),
            FragmentPolicy::Deny => return by_policy(Verdict::Drop, Reason::Fragment),
            FragmentPolicy::L3 => {}
        }
    }
    for entry in rules.entries() {
        if !matches(&entry.rule, &ip) {
            continue;
        }
        let (verdict, reason) = match entry.rule.action {
            Action::Allow => (Verdict::Pass, Reason::Rule),
            Action::Deny => (Verdict::Drop, Reason::Rule),
            Action::RateLimit(pps) if rate.take(entry.id, pps, ip.src, now_ns) => {
                (Verdict::Pass, Reason::Rule)
            }
            Action::RateLimit(_) => (Verdict::Drop, Reason::RateLimited),
            Action::ToUserspace => (Verdict::Pass, Reason::NoSocket),
        };
        return Decision {
            verdict,
            rule: Some(entry.id),
            reason,
        };
    }
    by_policy(policy.default, Reason::Default)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    fn udp4(src: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4(src, [198, 18, 200, 1], 64)
            .udp(5555, dport)
            .write(&mut f, &[0; 8])
            .unwrap();
        f
    }

    fn judge(rules: &str, frame: &[u8]) -> Decision {
        let set = Ruleset::parse_file_text("t", rules).unwrap();
        decide(
            &set,
            &Policy::default(),
            frame,
            &mut RateState::default(),
            0,
        )
    }

    #[test]
    fn priority_beats_longest_prefix() {
        // The /16 deny has a lower prio than the /24 allow inside it: it wins.
        let rules = "allow src 198.18.1.0/24 prio 50\ndeny src 198.18.0.0/16 prio 10\n";
        let d = judge(rules, &udp4([198, 18, 1, 9], 53));
        assert_eq!((d.verdict, d.rule), (Verdict::Drop, Some(2)));
        // Same prio: file order decides.
        let rules = "allow src 198.18.1.0/24\ndeny src 198.18.0.0/16\n";
        assert_eq!(judge(rules, &udp4([198, 18, 1, 9], 53)).rule, Some(1));
        assert_eq!(judge(rules, &udp4([198, 18, 2, 9], 53)).rule, Some(2));
        assert_eq!(
            judge(rules, &udp4([198, 19, 2, 9], 53)).reason,
            Reason::Default
        );
    }

    #[test]
    fn ports_imply_tcp_or_udp_and_need_a_header() {
        let d = judge("deny dport 53", &udp4([198, 18, 0, 1], 53));
        assert_eq!(d.verdict, Verdict::Drop);
        assert_eq!(
            judge("deny dport 53", &udp4([198, 18, 0, 1], 54)).reason,
            Reason::Default
        );
        let mut later = udp4([198, 18, 0, 1], 53);
        later[14 + 7] = 0x10;
        let set =
            Ruleset::parse_file_text("t", "deny dport 53\ndeny src 198.18.0.1 prio 200").unwrap();
        let l3 = Policy {
            fragments: FragmentPolicy::L3,
            ..Policy::default()
        };
        let d = decide(&set, &l3, &later, &mut RateState::default(), 0);
        assert_eq!(
            d.rule,
            Some(2),
            "later fragment skips the port rule, hits the L3 one"
        );
        let d = decide(
            &set,
            &Policy::default(),
            &later,
            &mut RateState::default(),
            0,
        );
        assert_eq!((d.verdict, d.reason), (Verdict::Pass, Reason::Fragment));
    }

    #[test]
    fn rate_limit_passes_pps_per_second_per_source() {
        let set = Ruleset::parse_file_text("t", "rate-limit 3 src 198.18.0.0/16").unwrap();
        let mut rate = RateState::default();
        let a = udp4([198, 18, 0, 1], 1);
        let b = udp4([198, 18, 0, 2], 1);
        let verdicts: Vec<Verdict> = (0..5)
            .map(|_| decide(&set, &Policy::default(), &a, &mut rate, 0).verdict)
            .collect();
        assert_eq!(
            verdicts,
            [
                Verdict::Pass,
                Verdict::Pass,
                Verdict::Pass,
                Verdict::Drop,
                Verdict::Drop
            ]
        );
        assert_eq!(
            decide(&set, &Policy::default(), &b, &mut rate, 0).verdict,
            Verdict::Pass,
            "own bucket"
        );
        // A third of a second later one token is back.
        let d = decide(&set, &Policy::default(), &a, &mut rate, 334_000_000);
        assert_eq!((d.verdict, d.rule), (Verdict::Pass, Some(1)));
        let d = decide(&set, &Policy::default(), &a, &mut rate, 334_000_001);
        assert_eq!(d.reason, Reason::RateLimited);
    }

    #[test]
    fn to_userspace_without_a_socket_goes_on() {
        let rules = "to-userspace proto udp dport 5000 prio 10\ndeny src 198.18.0.0/16\n";
        let d = judge(rules, &udp4([198, 18, 0, 1], 5000));
        assert_eq!(
            (d.verdict, d.rule, d.reason),
            (Verdict::Pass, Some(1), Reason::NoSocket),
            "the to-userspace rule decides, and the frame goes on"
        );
        let d = judge(rules, &udp4([198, 18, 0, 1], 5001));
        assert_eq!((d.verdict, d.rule), (Verdict::Drop, Some(2)));
    }

    #[test]
    fn policies_for_non_ip_and_malformed() {
        let mut arp = vec![0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(judge("deny", &arp).reason, Reason::NonIp);
        assert_eq!(judge("deny", &arp).verdict, Verdict::Pass);
        let mut bad = udp4([198, 18, 0, 1], 53);
        bad[14] = 0x43;
        let d = judge("allow", &bad);
        assert_eq!((d.verdict, d.reason), (Verdict::Drop, Reason::Malformed));
    }
}
