//! The firewall's kernel maps: compiling a [`Ruleset`] into them, and a
//! BPF_PROG_TEST_RUN harness that reports the deciding rule.
//!
//! Prefix rules (one `src` or `dst` prefix, nothing else) go into LPM tries;
//! all other rules into bit vectors ([`super::general`]).

use std::collections::HashMap;

use aya::{
    maps::{Array, MapData},
    Ebpf,
};
use ipnet::IpNet;
use xdpkit_common::{
    firewall::{
        FwConfig, FwTrace, RuleRef, ACTION_ALLOW, ACTION_DENY, ACTION_RATE_LIMIT, FW_CONFIG,
        FW_DST4, FW_DST6, FW_SRC4, FW_SRC6, FW_TRACE, POLICY_DROP, POLICY_L3, POLICY_PASS,
    },
    XdpAction,
};

use super::{
    general::write_trie, maps::MapSource, Action, Entry, FragmentPolicy, Policy, Rule, Ruleset,
    Verdict,
};
use crate::{object, testrun::TestRunOutcome, Error, Result};

/// The firewall's function (and kernel program) name.
pub const SYMBOL: &str = "xdpkit_firewall";

/// Whether the kernel program handles `rule` in this stage (a prefix rule).
pub fn is_prefix_rule(rule: &Rule) -> bool {
    let only_prefix = rule.proto.is_none()
        && rule.sport.is_none()
        && rule.dport.is_none()
        && rule.smac.is_none()
        && rule.vlan.is_none();
    only_prefix && (rule.src.is_some() != rule.dst.is_some())
}

/// The kernel's view of an entry: rank, id, action.
pub fn rule_ref(entry: &Entry) -> RuleRef {
    let (action, pps) = match entry.rule.action {
        Action::Allow => (ACTION_ALLOW, 0),
        Action::Deny => (ACTION_DENY, 0),
        Action::RateLimit(pps) => (ACTION_RATE_LIMIT, pps),
    };
    RuleRef {
        rank: (u64::from(entry.rule.prio) << 32) | (entry.seq & 0xffff_ffff),
        id: entry.id,
        action,
        pps,
        _pad: 0,
    }
}

/// Prefix-trie contents: for every prefix, the best rule among those on it
/// and on every prefix containing it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Compiled {
    /// Source IPv4 trie.
    pub src4: Vec<(IpNet, RuleRef)>,
    /// Destination IPv4 trie.
    pub dst4: Vec<(IpNet, RuleRef)>,
    /// Source IPv6 trie.
    pub src6: Vec<(IpNet, RuleRef)>,
    /// Destination IPv6 trie.
    pub dst6: Vec<(IpNet, RuleRef)>,
}

/// Compiles the prefix rules of `rules` for the kernel's tries.
pub fn compile(rules: &Ruleset) -> Result<Compiled> {
    let mut fields: [HashMap<IpNet, RuleRef>; 4] = Default::default();
    for entry in rules.entries() {
        if !is_prefix_rule(&entry.rule) {
            continue;
        }
        let (net, is_src) = match (entry.rule.src, entry.rule.dst) {
            (Some(net), None) => (net, true),
            (None, Some(net)) => (net, false),
            _ => unreachable!("is_prefix_rule checked"),
        };
        let field = match (is_src, net) {
            (true, IpNet::V4(_)) => 0,
            (false, IpNet::V4(_)) => 1,
            (true, IpNet::V6(_)) => 2,
            (false, IpNet::V6(_)) => 3,
        };
        let candidate = rule_ref(entry);
        fields[field]
            .entry(net)
            .and_modify(|best| {
                if candidate.rank < best.rank {
                    *best = candidate;
                }
            })
            .or_insert(candidate);
    }
    let [src4, dst4, src6, dst6] = fields.map(inherit);
    Ok(Compiled {
        src4,
        dst4,
        src6,
        dst6,
    })
}

/// Gives each prefix the best rule of itself and its ancestors in the set.
fn inherit(own: HashMap<IpNet, RuleRef>) -> Vec<(IpNet, RuleRef)> {
    let mut by_len: Vec<(IpNet, RuleRef)> = own.into_iter().collect();
    by_len.sort_by_key(|(net, _)| (net.prefix_len(), *net));
    let mut lengths: Vec<u8> = by_len.iter().map(|(n, _)| n.prefix_len()).collect();
    lengths.dedup();
    let mut done: HashMap<IpNet, RuleRef> = HashMap::with_capacity(by_len.len());
    for (net, mut best) in by_len {
        // Ancestors are shorter and already final, so the nearest one suffices.
        if let Some(parent) = lengths
            .iter()
            .rev()
            .filter(|l| **l < net.prefix_len())
            .find_map(|l| {
                IpNet::new(net.addr(), *l)
                    .ok()
                    .and_then(|p| done.get(&p.trunc()))
            })
        {
            if parent.rank < best.rank {
                best = *parent;
            }
        }
        done.insert(net, best);
    }
    let mut out: Vec<(IpNet, RuleRef)> = done.into_iter().collect();
    out.sort_by_key(|(net, _)| (net.prefix_len(), *net));
    out
}

/// A config with `policy`, no general rules and sequence 0.
pub fn config(policy: &Policy, active: u32, trace: bool) -> FwConfig {
    let verdict = |v: Verdict| {
        if v == Verdict::Drop {
            POLICY_DROP
        } else {
            POLICY_PASS
        }
    };
    FwConfig {
        active,
        default_policy: verdict(policy.default),
        fragments: match policy.fragments {
            FragmentPolicy::Allow => POLICY_PASS,
            FragmentPolicy::Deny => POLICY_DROP,
            FragmentPolicy::L3 => POLICY_L3,
        },
        non_ip: verdict(policy.non_ip),
        malformed: verdict(policy.malformed),
        trace: u32::from(trace),
        general: [0; 2],
        next_seq: 0,
    }
}

fn map_err(what: impl Into<String>) -> impl FnOnce(aya::maps::MapError) -> Error {
    let what = what.into();
    move |e| Error::Map {
        what,
        source: e.into(),
    }
}

/// The policies a config holds (the inverse of [`config`]).
pub fn policy_of(cfg: &FwConfig) -> Policy {
    let verdict = |v: u32| {
        if v == POLICY_DROP {
            Verdict::Drop
        } else {
            Verdict::Pass
        }
    };
    Policy {
        default: verdict(cfg.default_policy),
        fragments: match cfg.fragments {
            POLICY_DROP => FragmentPolicy::Deny,
            POLICY_L3 => FragmentPolicy::L3,
            _ => FragmentPolicy::Allow,
        },
        non_ip: verdict(cfg.non_ip),
        malformed: verdict(cfg.malformed),
    }
}

/// Reads the firewall's config.
pub fn read_config(maps: &impl MapSource) -> Result<FwConfig> {
    let map = maps
        .map(FW_CONFIG)
        .ok_or_else(|| object::missing_map(FW_CONFIG))?;
    let array: Array<&MapData, FwConfig> =
        Array::try_from(map).map_err(map_err("open FW_CONFIG"))?;
    array.get(&0, 0).map_err(map_err("read FW_CONFIG"))
}

/// Writes the firewall's config: one map update, so `active` flips atomically.
pub fn write_config(maps: &mut impl MapSource, cfg: FwConfig) -> Result<()> {
    let map = maps
        .map_mut(FW_CONFIG)
        .ok_or_else(|| object::missing_map(FW_CONFIG))?;
    let mut array: Array<&mut MapData, FwConfig> =
        Array::try_from(map).map_err(map_err("open FW_CONFIG"))?;
    array.set(0, cfg, 0).map_err(map_err("write FW_CONFIG"))
}

/// Sets the policies, keeping the rules and the active set.
pub fn set_policy(maps: &mut impl MapSource, policy: &Policy) -> Result<()> {
    let old = read_config(maps)?;
    let new = config(policy, old.active, old.trace != 0);
    write_config(
        maps,
        FwConfig {
            general: old.general,
            next_seq: old.next_seq,
            ..new
        },
    )
}

/// Writes `rules` completely into the inactive set, then makes it the
/// active one with a single config update: packets see the old rules or
/// the new ones, never a mix.
pub fn apply(maps: &mut impl MapSource, rules: &Ruleset) -> Result<()> {
    let compiled = compile(rules)?;
    let general: Vec<&Entry> = rules
        .entries()
        .iter()
        .filter(|e| !is_prefix_rule(&e.rule))
        .collect();
    let refs = general.iter().map(|e| rule_ref(e)).collect();
    let vectors = super::general::compile(&general, refs)?;
    let mut cfg = read_config(maps)?;
    let next = (cfg.active + 1) & 1;
    let set = next as usize;
    write_trie::<4, _>(maps, FW_SRC4[set], &compiled.src4)?;
    write_trie::<4, _>(maps, FW_DST4[set], &compiled.dst4)?;
    write_trie::<16, _>(maps, FW_SRC6[set], &compiled.src6)?;
    write_trie::<16, _>(maps, FW_DST6[set], &compiled.dst6)?;
    super::general::write(maps, set, &vectors)?;
    cfg.general[set] = general.len() as u32;
    cfg.active = next;
    write_config(maps, cfg)
}

/// The firewall program with private maps, for BPF_PROG_TEST_RUN.
pub struct FirewallHarness {
    ebpf: Ebpf,
}

impl FirewallHarness {
    /// Loads the firewall with `policy`, no rules, and tracing on.
    pub fn new(policy: Policy) -> Result<FirewallHarness> {
        let mut ebpf = object::load_firewall()?;
        object::program_by_symbol(&mut ebpf, SYMBOL, "firewall")?;
        write_config(&mut ebpf, config(&policy, 0, true))?;
        Ok(FirewallHarness { ebpf })
    }

    /// Changes the policy (takes effect for the next frame).
    pub fn set_policy(&mut self, policy: Policy) -> Result<()> {
        set_policy(&mut self.ebpf, &policy)
    }

    /// Replaces the rules atomically (see [`apply`]).
    pub fn load_rules(&mut self, rules: &Ruleset) -> Result<()> {
        apply(&mut self.ebpf, rules)
    }

    /// Runs one frame; returns the test-run outcome and the kernel's trace.
    pub fn run(&mut self, frame: &[u8]) -> Result<(TestRunOutcome, FwTrace)> {
        use aya::programs::{TestRun as _, TestRunOptions};
        let program = object::program_by_symbol(&mut self.ebpf, SYMBOL, "firewall")?;
        let mut output = vec![0u8; frame.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut output);
        let result = program.test_run(opts).map_err(|source| Error::TestRun {
            program: "firewall",
            source,
        })?;
        output.truncate(result.data_size_out as usize);
        let map = self
            .ebpf
            .map(FW_TRACE)
            .ok_or_else(|| object::missing_map(FW_TRACE))?;
        let array: Array<&MapData, FwTrace> =
            Array::try_from(map).map_err(map_err("open FW_TRACE"))?;
        let trace = array.get(&0, 0).map_err(map_err("read FW_TRACE"))?;
        Ok((
            TestRunOutcome {
                verdict: XdpAction::from_u32(result.return_value),
                code: result.return_value,
                output,
                ns_per_run: u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
            },
            trace,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_inherit_a_better_ancestor() {
        let rules = Ruleset::parse_file_text(
            "t",
            "allow src 198.18.1.0/24 prio 50\ndeny src 198.18.0.0/16 prio 10\nallow src 198.19.0.0/16\ndeny src 198.19.7.0/24\n",
        )
        .unwrap();
        let c = compile(&rules).unwrap();
        let get = |net: &str| {
            c.src4
                .iter()
                .find(|(n, _)| *n == net.parse::<IpNet>().unwrap())
                .unwrap()
                .1
                .id
        };
        assert_eq!(get("198.18.1.0/24"), 2, "the /16 deny has the better prio");
        assert_eq!(get("198.18.0.0/16"), 2);
        assert_eq!(get("198.19.7.0/24"), 3, "same prio: earlier line wins");
    }

    #[test]
    fn policies_round_trip_through_the_config() {
        let p = Policy {
            default: Verdict::Drop,
            fragments: FragmentPolicy::L3,
            non_ip: Verdict::Drop,
            malformed: Verdict::Pass,
        };
        assert_eq!(policy_of(&config(&p, 1, false)), p);
        assert_eq!(
            policy_of(&config(&Policy::default(), 0, false)),
            Policy::default()
        );
    }

    #[test]
    fn general_rules_stay_out_of_the_prefix_tries() {
        let text = "deny src 198.18.0.0/16 dport 80\ndeny dst 198.18.0.0/16\n";
        let rules = Ruleset::parse_file_text("t", text).unwrap();
        let c = compile(&rules).unwrap();
        assert!(c.src4.is_empty(), "the port rule is general");
        assert_eq!(c.dst4.len(), 1);
    }
}
