//! Readers (the exporter, `top`, `status`, `simulate --dev`) take no lock:
//! `rule add` never waits for a scrape, however many rules there are.

use std::{
    fmt::Write as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use xdpkit_lab::lab::require_root;

mod common;

use common::{firewall_lab, ok, xdpkit_in, XDPKIT};

const DUT_IF: &str = "xkrd-dut";

/// 1,000,000 distinct deny prefixes in the documentation ranges: every /28
/// to /32 of 198.18.0.0/15, as src and as dst (507,904 rules), then /64s of
/// 2001:db8::/32 as src.
fn million_prefixes() -> String {
    let mut text = String::with_capacity(32 * 1_000_000);
    let mut count = 0;
    for dir in ["src", "dst"] {
        for len in 28..=32u32 {
            let step = 1u32 << (32 - len);
            let base = u32::from(std::net::Ipv4Addr::new(198, 18, 0, 0));
            let mut at = 0;
            while at < 1 << 17 {
                let addr = std::net::Ipv4Addr::from(base + at);
                writeln!(text, "deny {dir} {addr}/{len}").unwrap();
                count += 1;
                at += step;
            }
        }
    }
    let mut i = 0u32;
    while count < 1_000_000 {
        writeln!(
            text,
            "deny src 2001:db8:{:x}:{:x}::/64",
            i >> 16,
            i & 0xffff
        )
        .unwrap();
        count += 1;
        i += 1;
    }
    text
}

/// Runs `xdpkit rule add` once; returns how long it took.
fn timed_add(lab: &xdpkit_lab::lab::Lab, n: u32) -> Duration {
    let start = Instant::now();
    let rule = format!("2001:db8:ffff:{n:x}::/64");
    ok(&xdpkit_in(
        lab,
        "dut",
        &["rule", "add", "--dev", DUT_IF, "deny", "src", &rule],
    ));
    start.elapsed()
}

#[test]
fn readers_do_not_block_rule_add() {
    if !require_root("readers_do_not_block_rule_add") {
        return;
    }
    let (lab, _) = firewall_lab("xkt-rd", "xkrd-gen", DUT_IF, "198.18.0.1/32");
    let file = std::env::temp_dir().join("xkt-rd-million.rules");
    std::fs::write(&file, million_prefixes()).unwrap();
    let loaded = Instant::now();
    ok(&xdpkit_in(
        &lab,
        "dut",
        &[
            "rule",
            "load",
            "--dev",
            DUT_IF,
            "--file",
            file.to_str().unwrap(),
        ],
    ));
    let _ = std::fs::remove_file(&file);
    println!("loaded 1,000,000 rules in {:?}", loaded.elapsed());

    // Without readers: the time an add takes here.
    let baseline = (0..2).map(|n| timed_add(&lab, n)).max().unwrap();

    // A scraper reading every rule, over and over.
    let stop = Arc::new(AtomicBool::new(false));
    let scraping = Arc::new(AtomicBool::new(false));
    let scrapes: Arc<Mutex<Vec<(Instant, Instant)>>> = Arc::default();
    let scraper = {
        let (stop, scraping, scrapes) = (stop.clone(), scraping.clone(), scrapes.clone());
        let mut command = lab.command("dut", XDPKIT);
        command.args(["exporter", "--once"]);
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                scraping.store(true, Ordering::SeqCst);
                let out = command.output().expect("run the exporter");
                scraping.store(false, Ordering::SeqCst);
                assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                scrapes.lock().unwrap().push((start, Instant::now()));
            }
        })
    };

    let bound = (baseline * 10).max(Duration::from_secs(2));
    let mut adds = Vec::new();
    for n in 2..7 {
        // Start each add while a scrape runs.
        let wait = Instant::now();
        while !scraping.load(Ordering::SeqCst) && wait.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let start = Instant::now();
        let took = timed_add(&lab, n);
        println!("rule add during a scrape: {took:?} (baseline {baseline:?})");
        assert!(
            took <= bound,
            "rule add took {took:?} with a scraper running, {baseline:?} without: it waited for a reader"
        );
        adds.push((start, start + took));
    }
    stop.store(true, Ordering::SeqCst);
    scraper.join().expect("scraper thread");

    let scrapes = scrapes.lock().unwrap();
    let overlapped = adds
        .iter()
        .filter(|(a0, a1)| scrapes.iter().any(|(s0, s1)| s0 < a1 && a0 < s1))
        .count();
    println!(
        "{} scrapes; {overlapped} of 5 adds ran during one",
        scrapes.len()
    );
    assert!(overlapped >= 1, "no add ran while a scrape was in progress");
}
