//! The balancer's `apply` settings through a private chain (the same
//! install code as an interface's): a declaration installed on new maps,
//! then changed in place while flows are established (reals drained,
//! removed and added, VIPs resized, given flags, removed and added, the
//! outer sources changed), and read back as the same settings.

use std::path::Path;

use etherparse::PacketBuilder;
use xdpkit::{
    chain::StageSpec,
    programs::{balancer::Balancer, Program as _},
    testrun::Harness,
    XdpAction,
};
use xdpkit_lab::lab::require_root;

fn settings(text: &str) -> toml::Table {
    Balancer
        .normalise_settings(Some(&text.parse().unwrap()), Path::new("."))
        .unwrap_or_else(|e| panic!("{e}"))
}

fn stage(settings: &toml::Table) -> [StageSpec; 1] {
    [StageSpec {
        program: &Balancer,
        settings: settings.clone(),
    }]
}

fn udp(vip: [u8; 4], sport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([198, 18, 0, 5], vip, 64)
        .udp(sport, 53)
        .write(&mut f, &[0xab; 22])
        .unwrap();
    f
}

/// The real (outer IPv4 destination) a frame went to, and its outer source.
fn sent(h: &mut Harness, frame: &[u8]) -> Option<([u8; 4], [u8; 4])> {
    let out = h.run(frame, 1).unwrap();
    if out.verdict != Some(XdpAction::Tx) {
        return None;
    }
    let o = &out.output;
    assert_eq!(o[23], 4, "IPIP");
    Some((o[30..34].try_into().unwrap(), o[26..30].try_into().unwrap()))
}

const A: &str = r#"
source4 = "198.19.0.0/16"
vips = ["198.18.1.10:53/udp ring 1009", "198.18.1.11:53/udp ring 7", "198.18.1.12:53/udp"]
reals = [
  "198.18.1.10:53/udp 198.18.2.1",
  "198.18.1.10:53/udp 198.18.2.2",
  "198.18.1.10:53/udp 198.18.2.3",
  "198.18.1.10:53/udp 198.18.2.4",
  "198.18.1.11:53/udp 198.18.2.1",
  "198.18.1.12:53/udp 198.18.2.5",
]
"#;

/// A with 198.18.2.2 drained, 198.18.2.3 removed and 198.18.2.6 added;
/// .11 resized and stateless; .12 removed and .13 added; another /24.
const B: &str = r#"
source4 = "198.19.7.0/24"
vips = ["198.18.1.10:53/udp ring 1009", "198.18.1.11:53/udp ring 11 no-flows", "198.18.1.13:53/udp ring 7"]
reals = [
  "198.18.1.10:53/udp 198.18.2.1",
  "198.18.1.10:53/udp 198.18.2.2 weight 0",
  "198.18.1.10:53/udp 198.18.2.4",
  "198.18.1.10:53/udp 198.18.2.6 weight 2",
  "198.18.1.11:53/udp 198.18.2.1",
  "198.18.1.13:53/udp 198.18.2.7",
]
"#;

#[test]
fn declared_vips_change_in_place_and_established_flows_stay() {
    if !require_root("declared_vips_change_in_place_and_established_flows_stay") {
        return;
    }
    let (a, b) = (settings(A), settings(B));
    let mut h = Harness::new(&stage(&a)).unwrap();
    let running = |h: &Harness| Balancer.running_settings(&h.stage_dir("balancer")).unwrap();
    assert_eq!(running(&h), a);

    let vip10 = [198, 18, 1, 10];
    let flows = 40_000..40_300u16;
    let before: Vec<[u8; 4]> = flows
        .clone()
        .map(|p| sent(&mut h, &udp(vip10, p)).unwrap().0)
        .collect();
    for real in [[198, 18, 2, 2], [198, 18, 2, 3]] {
        assert!(before.contains(&real), "300 flows reach every real");
    }
    assert_eq!(
        sent(&mut h, &udp([198, 18, 1, 12], 1)).unwrap().0,
        [198, 18, 2, 5]
    );

    h.install(&stage(&b)).unwrap();
    assert_eq!(running(&h), b);
    for (p, was) in flows.clone().zip(&before) {
        let (now, src) = sent(&mut h, &udp(vip10, p)).unwrap();
        assert_eq!(&src[..3], &[198, 19, 7], "outer sources from the new /24");
        if *was == [198, 18, 2, 3] {
            // Its real is gone: the flow chooses again, among the reals with weight.
            assert!(
                [[198, 18, 2, 1], [198, 18, 2, 4], [198, 18, 2, 6]].contains(&now),
                "{now:?}"
            );
        } else {
            assert_eq!(now, *was, "flow {p} kept its real (drained or not)");
        }
    }
    for p in 50_000..50_300u16 {
        let (now, _) = sent(&mut h, &udp(vip10, p)).unwrap();
        assert!(
            ![[198, 18, 2, 2], [198, 18, 2, 3]].contains(&now),
            "a new flow went to {now:?}"
        );
    }
    let gone = h.run(&udp([198, 18, 1, 12], 1), 1).unwrap();
    assert_eq!(
        gone.verdict,
        Some(XdpAction::Pass),
        "removed VIP: next stage"
    );
    assert_eq!(
        sent(&mut h, &udp([198, 18, 1, 13], 1)).unwrap().0,
        [198, 18, 2, 7]
    );
    assert_eq!(
        sent(&mut h, &udp([198, 18, 1, 11], 1)).unwrap().0,
        [198, 18, 2, 1]
    );

    // The same declaration again changes nothing; back to A restores it.
    h.install(&stage(&b)).unwrap();
    assert_eq!(running(&h), b);
    h.install(&stage(&a)).unwrap();
    assert_eq!(running(&h), a);
    assert_eq!(
        sent(&mut h, &udp([198, 18, 1, 12], 1)).unwrap().0,
        [198, 18, 2, 5]
    );
    // No settings (as `attach` gives): the VIPs stay.
    h.install(&stage(&toml::Table::new())).unwrap();
    assert_eq!(running(&h), a);
}
