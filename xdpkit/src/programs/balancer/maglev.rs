//! Maglev consistent hashing (Eisenbud et al., NSDI 2016, section 3.4):
//! the lookup table ("ring") that spreads a VIP's new flows over its reals.
//!
//! Every real has a permutation of the ring's slots, fixed by its identity
//! alone (`offset + j * skip mod size`, with `size` prime so every `skip`
//! visits every slot); reals take turns claiming the next free slot of
//! their permutation until the ring is full. A change of the set of reals
//! moves few slots (the ones the changed real held, and about as many
//! again), and the table is the same on every host that builds it from the
//! same reals.
//!
//! Weights: in turn `t` a real of weight `w` may hold up to `t * w /
//! w_max` slots, so shares follow the weights whatever their sum (Katran
//! asks for weights scaled to the ring, its issue #35). Weight 0 drains a
//! real: it holds no slot, so it gets no new flow.

use std::fmt;

/// The default ring size (Maglev's and Katran's): prime, about 650 slots
/// for each of 100 reals.
pub const DEFAULT_RING: u32 = 65_537;

/// The largest ring size accepted (one `u32` per slot in the kernel: 16 MB).
pub const MAX_RING: u32 = 4_194_301;

/// The smallest ring size accepted.
pub const MIN_RING: u32 = 7;

/// A ring slot no real holds (every weight is 0, or there is no real).
pub const NO_REAL: u32 = u32::MAX;

/// One real as the ring builder sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// What fixes the real's permutation: a hash of its address
    /// ([`identity`]), so that the same real claims the same slots on
    /// every host and after every restart.
    pub identity: u64,
    /// Relative share of new flows; 0 drains the real.
    pub weight: u32,
}

/// Why a ring cannot be built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The size is not a prime in [`MIN_RING`]..=[`MAX_RING`].
    Size(u32),
    /// More reals than slots: some would get none.
    TooManyMembers { members: usize, size: u32 },
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::Size(size) => write!(
                f,
                "ring size {size} is not a prime between {MIN_RING} and {MAX_RING} \
                 (Maglev needs a prime; the default is {DEFAULT_RING})"
            ),
            RingError::TooManyMembers { members, size } => write!(
                f,
                "{members} reals do not fit a ring of {size} slots: choose a larger ring"
            ),
        }
    }
}

impl std::error::Error for RingError {}

/// Whether `n` is prime (trial division: ring sizes are at most a few
/// million).
pub fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = u64::from(n);
    let mut d = 3u64;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}

/// Checks a ring size: a prime within [`MIN_RING`]..=[`MAX_RING`].
pub fn check_size(size: u32) -> Result<u32, RingError> {
    if (MIN_RING..=MAX_RING).contains(&size) && is_prime(size) {
        Ok(size)
    } else {
        Err(RingError::Size(size))
    }
}

/// The identity of a real from its address bytes (4 or 16): a fixed hash,
/// the same in every build, so rings survive upgrades.
pub fn identity(address: &[u8]) -> u64 {
    // FNV-1a over the bytes, then a 64-bit finalizer (splitmix64) so that
    // neighbouring addresses get unrelated permutations.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in address {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    mix(h)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The ring of `size` slots (a prime) for `members`: each slot holds the
/// index of a member in `members`, or [`NO_REAL`] when every weight is 0.
pub fn build(members: &[Member], size: u32) -> Result<Vec<u32>, RingError> {
    let size = check_size(size)?;
    let mut ring = vec![NO_REAL; size as usize];
    // Turns go in the order of identities, not of the list: hosts that
    // list the same reals differently build the same ring.
    let mut active: Vec<usize> = (0..members.len())
        .filter(|&i| members[i].weight > 0)
        .collect();
    active.sort_by_key(|&i| (members[i].identity, i));
    if active.is_empty() {
        return Ok(ring);
    }
    if active.len() > size as usize {
        return Err(RingError::TooManyMembers {
            members: active.len(),
            size,
        });
    }
    let m = u64::from(size);
    // Permutation of member i: offset + j * skip (mod size), skip in 1..size.
    let perm: Vec<(u64, u64)> = active
        .iter()
        .map(|&i| {
            let id = members[i].identity;
            let offset = mix(id ^ 0x5851_f42d_4c95_7f2d) % m;
            let skip = mix(id ^ 0x1405_7b7e_f767_814f) % (m - 1) + 1;
            (offset, skip)
        })
        .collect();
    let w_max = active
        .iter()
        .map(|&i| u64::from(members[i].weight))
        .max()
        .unwrap_or(1);
    let mut next = vec![0u64; active.len()]; // next j of each permutation
    let mut held = vec![0u64; active.len()];
    let mut filled = 0u64;
    let mut turn = 0u64;
    while filled < m {
        turn += 1;
        for (k, &i) in active.iter().enumerate() {
            // Up to `turn * w / w_max` slots by the end of this turn: a
            // real of the largest weight claims one slot a turn.
            let quota = turn * u64::from(members[i].weight) / w_max;
            while held[k] < quota && filled < m {
                let (offset, skip) = perm[k];
                // The next free slot of this member's permutation; it
                // visits every slot, so one is found while any is free.
                let slot = loop {
                    let s = (offset + next[k] * skip) % m;
                    next[k] += 1;
                    if ring[s as usize] == NO_REAL {
                        break s;
                    }
                };
                ring[slot as usize] = i as u32;
                held[k] += 1;
                filled += 1;
            }
            if filled == m {
                break;
            }
        }
    }
    Ok(ring)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(n: usize, weight: impl Fn(usize) -> u32) -> Vec<Member> {
        (0..n)
            .map(|i| Member {
                identity: identity(&[198, 18, (i >> 8) as u8, i as u8]),
                weight: weight(i),
            })
            .collect()
    }

    fn counts(ring: &[u32], n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for &r in ring {
            c[r as usize] += 1;
        }
        c
    }

    #[test]
    fn sizes_must_be_primes_in_range() {
        assert!(check_size(65_537).is_ok());
        assert!(check_size(251).is_ok());
        assert_eq!(check_size(65_536), Err(RingError::Size(65_536)));
        assert_eq!(check_size(5), Err(RingError::Size(5)));
        assert_eq!(check_size(4_194_319), Err(RingError::Size(4_194_319)));
        assert!(is_prime(MAX_RING) && is_prime(MIN_RING) && is_prime(DEFAULT_RING));
        let primes: Vec<u32> = (0..30).filter(|&n| is_prime(n)).collect();
        assert_eq!(primes, [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]);
    }

    /// Maglev's balance: 100 reals of equal weight on 65,537 slots hold
    /// 655 or 656 each (1.0015).
    #[test]
    fn equal_weights_balance_within_one_percent() {
        let ring = build(&members(100, |_| 1), DEFAULT_RING).expect("ring");
        let c = counts(&ring, 100);
        let (min, max) = (*c.iter().min().unwrap(), *c.iter().max().unwrap());
        eprintln!(
            "100 reals, ring {DEFAULT_RING}: {min} to {max} slots each ({:.4})",
            max as f64 / min as f64
        );
        assert!(max as f64 / min as f64 <= 1.01, "max {max} min {min}");
        assert_eq!(c.iter().sum::<usize>(), DEFAULT_RING as usize);
    }

    /// Removing one real of 100 moves at most 1% of the slots the others
    /// held (Maglev reports about 0.5%).
    #[test]
    fn removing_a_real_moves_few_other_slots() {
        let all = members(100, |_| 1);
        let before = build(&all, DEFAULT_RING).expect("ring");
        for gone in [0, 37, 99] {
            let mut rest = all.clone();
            rest.remove(gone);
            let after = build(&rest, DEFAULT_RING).expect("ring");
            // Index in `rest` back to index in `all`.
            let orig = |r: u32| if (r as usize) < gone { r } else { r + 1 };
            let others = before.iter().filter(|&&r| r as usize != gone).count();
            let moved = before
                .iter()
                .zip(&after)
                .filter(|(&b, &a)| b as usize != gone && orig(a) != b)
                .count();
            let share = moved as f64 / others as f64;
            eprintln!(
                "removing real {gone} of 100: {moved} of {others} other slots moved ({:.2}%)",
                100.0 * share
            );
            assert!(share <= 0.01, "removing {gone}: {moved} of {others} moved");
        }
    }

    /// Each real's share is within 1% (relative) of its weight's share,
    /// whatever the sum of the weights.
    #[test]
    fn shares_follow_weights() {
        for (n, weight) in [
            (100, (|i| 1 + (i % 4) as u32) as fn(usize) -> u32),
            (10, |i| 1000 * (1 + i as u32)),
            (3, |i| [1, 2, 7][i]),
        ] {
            let m = members(n, weight);
            let ring = build(&m, DEFAULT_RING).expect("ring");
            let c = counts(&ring, n);
            let total: u64 = m.iter().map(|m| u64::from(m.weight)).sum();
            for (i, member) in m.iter().enumerate() {
                let want = DEFAULT_RING as f64 * f64::from(member.weight) / total as f64;
                let err = (c[i] as f64 - want).abs() / want;
                assert!(
                    err <= 0.01,
                    "{n} reals, real {i}: {} slots, want {want:.1}",
                    c[i]
                );
            }
        }
    }

    #[test]
    fn weight_zero_drains_and_all_zero_leaves_the_ring_empty() {
        let mut m = members(10, |_| 5);
        m[3].weight = 0;
        let ring = build(&m, 251).expect("ring");
        assert!(ring.iter().all(|&r| r != 3 && r != NO_REAL));
        let none = build(&members(4, |_| 0), 251).expect("ring");
        assert!(none.iter().all(|&r| r == NO_REAL));
        assert!(build(&[], 251).expect("ring").iter().all(|&r| r == NO_REAL));
    }

    #[test]
    fn more_reals_than_slots_is_refused() {
        assert_eq!(
            build(&members(8, |_| 1), 7),
            Err(RingError::TooManyMembers {
                members: 8,
                size: 7
            })
        );
    }

    /// The ring depends on the reals' identities and weights, not their
    /// order in the list (hosts that list them differently agree).
    #[test]
    fn same_reals_same_ring_whatever_the_order() {
        let m = members(20, |i| 1 + i as u32 % 3);
        let a = build(&m, 1009).expect("ring");
        let mut rev = m.clone();
        rev.reverse();
        let b = build(&rev, 1009).expect("ring");
        let n = m.len() as u32;
        assert!(a.iter().zip(&b).all(|(&x, &y)| x == n - 1 - y));
    }
}
