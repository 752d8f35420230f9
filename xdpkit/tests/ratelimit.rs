//! Rate limits in the kernel through BPF_PROG_TEST_RUN: a bucket starts
//! full, runs dry and refills, token for token as the reference model says.
//!
//! The kernel reads its clock (`bpf_ktime_get_ns`) itself, so after every
//! frame the test reads the bucket the kernel left in `FW_BUCKETS` and
//! drives the model (`RateState`) with the same `now_ns` (the bucket's
//! `last_ns`): decision, credit and time must then agree exactly, to the
//! nanotoken. On top of that, each phase checks the bucket arithmetic
//! explicitly from the kernel's timestamps.

use std::{net::IpAddr, thread::sleep, time::Duration};

use etherparse::PacketBuilder;
use xdpkit::{
    firewall::{
        kernel::FirewallHarness,
        model::{decide, RateState, Reason},
        Policy, Ruleset, Verdict,
    },
    XdpAction,
};
use xdpkit_common::firewall::{Bucket, Outcome};
use xdpkit_lab::lab::require_root;

/// The limit: one token every 200 ms, so a burst of frames runs the bucket
/// dry long before a token comes back, even on a loaded machine.
const PPS: u32 = 5;
/// Nanotokens per packet.
const TOKEN: u64 = 1_000_000_000;
const CAPACITY: u64 = PPS as u64 * TOKEN;

fn udp4(src: [u8; 4]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, [198, 18, 200, 1], 64)
        .udp(5555, 53)
        .write(&mut f, &[0; 8])
        .unwrap();
    f
}

fn udp6(src: [u8; 16]) -> Vec<u8> {
    let mut dst = src;
    dst[15] = 0xfe;
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv6(src, dst, 64)
        .udp(5555, 53)
        .write(&mut f, &[0; 8])
        .unwrap();
    f
}

/// The kernel and the model side by side.
struct Lockstep {
    harness: FirewallHarness,
    rules: Ruleset,
    policy: Policy,
    rate: RateState,
    frames: u64,
}

impl Lockstep {
    /// Runs `frame` (from `src`, decided by rate-limit rule `id`) through
    /// the kernel, then through the model at the kernel's time; asserts
    /// they agree on everything. Returns whether it passed, and the bucket.
    fn send(&mut self, id: u32, src: IpAddr, frame: &[u8]) -> (bool, Bucket) {
        let before = self.harness.bucket(id, src).unwrap();
        let (out, trace) = self.harness.run(frame).unwrap();
        let bucket = self
            .harness
            .bucket(id, src)
            .unwrap()
            .expect("the kernel made a bucket");
        if let Some(b) = before {
            assert!(bucket.last_ns >= b.last_ns, "the clock went back");
        }
        let want = decide(
            &self.rules,
            &self.policy,
            frame,
            &mut self.rate,
            bucket.last_ns,
        );
        let n = self.frames;
        assert_eq!(want.rule, Some(id), "frame {n}: the model's rule");
        assert_eq!(trace.rule, id, "frame {n}: the kernel's rule");
        let (action, outcome) = match (want.verdict, want.reason) {
            (Verdict::Pass, Reason::Rule) => (XdpAction::Pass, Outcome::Rule),
            (Verdict::Drop, Reason::RateLimited) => (XdpAction::Drop, Outcome::RateLimited),
            other => panic!("frame {n}: the model decided {other:?}"),
        };
        assert_eq!(out.verdict, Some(action), "frame {n}: verdict");
        assert_eq!(trace.outcome, outcome as u32, "frame {n}: outcome");
        assert_eq!(
            self.rate.bucket(id, src),
            Some((bucket.credit, bucket.last_ns)),
            "frame {n}: model bucket (credit, last_ns) != kernel bucket {bucket:?}"
        );
        self.frames += 1;
        (action == XdpAction::Pass, bucket)
    }

    /// Sends frames until one is limited; checks the number that passed
    /// against the bucket arithmetic on the kernel's timestamps and returns
    /// it.
    /// Also returns the burst's span on the kernel's clock.
    fn drain(&mut self, id: u32, src: IpAddr, frame: &[u8]) -> (u64, u64) {
        let before = self.harness.bucket(id, src).unwrap();
        let mut passed = 0;
        let mut start = None;
        loop {
            let (pass, bucket) = self.send(id, src, frame);
            let first = *start.get_or_insert(bucket);
            if pass {
                passed += 1;
                assert!(passed <= 4 * u64::from(PPS), "the bucket never ran dry");
                continue;
            }
            // What the bucket held at the burst's first frame (refilled
            // since `before`, capped at a second's worth), plus the refill
            // during the burst: every pass took a whole token of it and
            // the limited frame found less than one.
            let at_first = match before {
                None => CAPACITY,
                Some(b) => {
                    let idle = (first.last_ns - b.last_ns).min(TOKEN);
                    (b.credit + idle * u64::from(PPS)).min(CAPACITY)
                }
            };
            let total = at_first + (bucket.last_ns - first.last_ns) * u64::from(PPS);
            assert_eq!(
                passed,
                total / TOKEN,
                "passes vs tokens: {total} nanotokens"
            );
            assert_eq!(bucket.credit, total % TOKEN, "credit left after the burst");
            return (passed, bucket.last_ns - first.last_ns);
        }
    }
}

#[test]
fn bucket_runs_dry_and_refills_exactly_as_the_model() {
    if !require_root("bucket_runs_dry_and_refills_exactly_as_the_model") {
        return;
    }
    let rules = Ruleset::parse_file_text(
        "t",
        &format!(
            "rate-limit {PPS} src 198.18.0.0/15\nrate-limit {PPS} src 2001:db8::/32\n\
             rate-limit {PPS} src 203.0.113.0/24 proto udp dport 53\n"
        ),
    )
    .unwrap();
    let mut harness = FirewallHarness::new(Policy::default()).unwrap();
    harness.load_rules(&rules).unwrap();
    let mut t = Lockstep {
        harness,
        rules,
        policy: Policy::default(),
        rate: RateState::default(),
        frames: 0,
    };
    let a: [u8; 4] = [198, 18, 0, 1];
    let (src_a, frame_a) = (IpAddr::from(a), udp4(a));

    // A new bucket is full: PPS frames pass, and a burst takes far less
    // than the 200 ms a token takes to come back, so the next is limited.
    let (pass, bucket) = t.send(1, src_a, &frame_a);
    assert!(pass, "the first frame passes");
    assert_eq!(
        bucket.credit,
        CAPACITY - TOKEN,
        "starts full, one token taken"
    );
    let (rest, span) = t.drain(1, src_a, &frame_a);
    let burst = 1 + rest;
    println!("new bucket: {burst} frames passed in {span} ns, then limited");
    // (Only a stall of 200 ms within the burst could bring a token back.)
    assert!(
        burst == u64::from(PPS) || span >= TOKEN / u64::from(PPS),
        "a full bucket holds PPS tokens"
    );
    // Dry: frames right after are limited (unless, again, 200 ms went by),
    // and still move its clock on, so no refill is lost.
    let mut dry = t.harness.bucket(1, src_a).unwrap().unwrap();
    for _ in 0..3 {
        let (pass, bucket) = t.send(1, src_a, &frame_a);
        let refill = (bucket.last_ns - dry.last_ns) * u64::from(PPS);
        assert_eq!(pass, dry.credit + refill >= TOKEN, "a dry bucket limits");
        let taken = if pass { TOKEN } else { 0 };
        assert_eq!(
            bucket.credit,
            dry.credit + refill - taken,
            "limited: nothing taken"
        );
        dry = bucket;
    }

    // Buckets are per (rule, source): other sources and families have theirs.
    let c: [u8; 4] = [198, 19, 7, 7];
    let (pass, bucket) = t.send(1, IpAddr::from(c), &udp4(c));
    assert!(pass && bucket.credit == CAPACITY - TOKEN, "own bucket");
    let mut b6 = [0u8; 16];
    b6[..4].copy_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
    b6[15] = 1;
    assert!(t.drain(2, IpAddr::from(b6), &udp6(b6)).0 >= u64::from(PPS));
    // A general rule (ports) takes its tokens through the same code.
    let g: [u8; 4] = [203, 0, 113, 9];
    assert!(t.drain(3, IpAddr::from(g), &udp4(g)).0 >= u64::from(PPS));

    // Half a second refills two and a half tokens (or a little more: the
    // kernel's clock says how much, to the nanosecond).
    sleep(Duration::from_millis(500));
    let (refilled, _) = t.drain(1, src_a, &frame_a);
    println!("after 500 ms: {refilled} frames passed");
    assert!(refilled >= 2, "500 ms at {PPS} pps refilled {refilled}");

    // A longer pause fills the bucket, but never beyond its capacity.
    sleep(Duration::from_millis(1500));
    let (pass, bucket) = t.send(1, src_a, &frame_a);
    assert!(pass);
    assert_eq!(
        bucket.credit,
        CAPACITY - TOKEN,
        "refilled to the brim, no more"
    );
    let (rest, span) = t.drain(1, src_a, &frame_a);
    let after_pause = 1 + rest;
    println!("after 1.5 s: {after_pause} frames passed");
    assert!(after_pause == u64::from(PPS) || span >= TOKEN / u64::from(PPS));
    println!(
        "{} frames: kernel bucket == model bucket after each",
        t.frames
    );
}
