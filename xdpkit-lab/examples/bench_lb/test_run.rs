//! Per-packet cost in BPF_PROG_TEST_RUN: bare drop (drop.c), the least a
//! balancer does (`lb_floor`: parse, VIP, flow table, real, IPIP, TX),
//! xdpkit's balancer and Katran's, on the same VIP, reals and frames.
//!
//! `repeat` reruns the same buffer, and an encapsulating program grows it
//! from the second run on (it sees its own output), so every run here is
//! one frame (`repeat` 1) copied fresh by the kernel, timed by the kernel
//! (the duration it reports: the program plus one clock read, which the
//! drop anchor shows). A round runs each program on `runs` frames per
//! scenario and keeps the median; rounds rotate the programs' order.
//!
//! - established: one TCP flow (ACK), already in the program's flow table;
//! - new flow, SYN: a fresh 5-tuple per frame (distinct source ports),
//!   TCP SYN: both programs skip the flow table's lookup, consult the
//!   ring and insert the flow;
//! - new flow, no SYN: a fresh 5-tuple per frame, TCP ACK: the lookup
//!   misses, then the ring and the insert (a flow table lost or evicted).

use std::{net::Ipv4Addr, path::Path};

use aya::{
    programs::{TestRun as _, TestRunOptions, Xdp},
    Ebpf,
};
use xdpkit::{
    programs::balancer::{tables, write_tables, Balancer},
    testrun::Alone,
};
use xdpkit_common::balancer::LbConfig;

use super::{katran::Katran, tcp_frame, BoxResult, Setup, CLIENT_MAC};

/// The CPU the test runs are pinned to: per-CPU flow tables stay whole.
const CPU: usize = 1;
/// The established flow's client.
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 18, 100, 1), 40_000);
/// New flows' clients: sources from here up, 50,000 ports each.
const NEW_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 128, 0);
const PORTS_PER_SOURCE: u32 = 50_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Established,
    NewSyn,
    NewNoSyn,
}

impl Scenario {
    pub const ALL: [Scenario; 3] = [Scenario::Established, Scenario::NewSyn, Scenario::NewNoSyn];

    /// Its name for `--scenarios`.
    pub fn key(self) -> &'static str {
        match self {
            Scenario::Established => "established",
            Scenario::NewSyn => "syn",
            Scenario::NewNoSyn => "no-syn",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Established => "established flow",
            Scenario::NewSyn => "new flow (SYN)",
            Scenario::NewNoSyn => "new flow (no SYN, flow-table miss)",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prog {
    Drop,
    Floor,
    Xdpkit,
    Katran,
}

impl Prog {
    pub const ALL: [Prog; 4] = [Prog::Drop, Prog::Floor, Prog::Xdpkit, Prog::Katran];

    pub fn name(self) -> &'static str {
        match self {
            Prog::Drop => "bare drop (drop.c)",
            Prog::Floor => "least balancer (lb_floor)",
            Prog::Xdpkit => "xdpkit balancer",
            Prog::Katran => "Katran balancer",
        }
    }
}

/// Per-round medians (ns per frame) by scenario and program; empty where
/// a program did not run (Katran without `--katran-obj`).
pub struct TestRunNs {
    pub rounds: Vec<Vec<Vec<f64>>>,
    /// Flows in each balancer's flow table at the end, and how many the
    /// runs inserted: equal unless a table evicted or refused entries.
    pub flows: Vec<(Prog, usize, usize)>,
}

impl TestRunNs {
    pub fn of(&self, s: Scenario, p: Prog) -> &[f64] {
        &self.rounds[s as usize][p as usize]
    }
}

struct Loaded {
    drop: Ebpf,
    floor: Ebpf,
    xdpkit: Alone,
    katran: Option<Katran>,
}

impl Loaded {
    fn program(&mut self, p: Prog) -> BoxResult<Option<&mut Xdp>> {
        Ok(match p {
            Prog::Drop => Some(
                self.drop
                    .programs_mut()
                    .next()
                    .ok_or("drop.o holds no program")?
                    .1
                    .try_into()?,
            ),
            Prog::Floor => Some(
                self.floor
                    .program_mut(xdpkit::bench::LB_FLOOR_SYMBOL)
                    .ok_or("lb_floor holds no program")?
                    .try_into()?,
            ),
            Prog::Xdpkit => Some(
                self.xdpkit
                    .maps()
                    .program_mut(xdpkit::Program::symbol(&Balancer))
                    .ok_or("the balancer's program is gone")?
                    .try_into()?,
            ),
            Prog::Katran => match self.katran.as_mut() {
                Some(k) => Some(k.program()?),
                None => None,
            },
        })
    }
}

/// One run of `frame`: (return code, output, kernel-measured ns).
fn run_once(prog: &mut Xdp, frame: &[u8], out: &mut [u8]) -> BoxResult<(u32, usize, u64)> {
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(frame);
    opts.data_out = Some(out);
    opts.repeat = 1;
    let r = prog.test_run(opts)?;
    Ok((
        r.return_value,
        r.data_size_out as usize,
        u64::try_from(r.duration.as_nanos()).unwrap_or(u64::MAX),
    ))
}

/// Loads the three programs with `setup`'s VIP and runs the rounds.
pub fn measure(
    setup: &Setup,
    drop_obj: &Path,
    katran_obj: Option<&Path>,
    scenarios: &[Scenario],
    rounds: usize,
    runs: usize,
) -> BoxResult<TestRunNs> {
    xdpkit_lab::benchkit::set_affinity(0, CPU)?;
    let mut drop = aya::EbpfLoader::new().load_file(drop_obj)?;
    {
        let (_, p) = drop
            .programs_mut()
            .next()
            .ok_or("drop.o holds no program")?;
        let p: &mut Xdp = p.try_into()?;
        p.load()?;
    }
    let t = tables::build(
        LbConfig {
            gateway: CLIENT_MAC,
            src4: u32::from_ne_bytes([198, 19, 0, 0]),
            src4_bits: 16,
            ..LbConfig::default()
        },
        &[setup.vip_spec()],
    )?;
    let mut xdpkit = Alone::new(&Balancer)?;
    write_tables(xdpkit.maps(), &t)?;
    let floor = load_floor(&t)?;
    let katran = katran_obj
        .map(|path| Katran::load(path, &setup.katran(&t)))
        .transpose()?;
    let mut loaded = Loaded {
        drop,
        floor,
        xdpkit,
        katran,
    };

    let established = tcp_frame(CLIENT.0, CLIENT.1, setup, false);
    check_output(&mut loaded, setup, &established)?;
    let mut next_flow: u32 = 0;
    let mut samples = vec![vec![Vec::new(); Prog::ALL.len()]; Scenario::ALL.len()];
    let mut out = vec![0u8; established.len() + 256];
    for round in 0..rounds {
        let frames: Vec<Vec<Vec<u8>>> = Scenario::ALL
            .iter()
            .map(|s| match s {
                Scenario::Established => vec![established.clone()],
                Scenario::NewSyn | Scenario::NewNoSyn => (0..runs)
                    .map(|_| {
                        let k = next_flow;
                        next_flow += 1;
                        let src = Ipv4Addr::from(u32::from(NEW_BASE) + k / PORTS_PER_SOURCE);
                        let sport = 10_000 + (k % PORTS_PER_SOURCE) as u16;
                        tcp_frame(src, sport, setup, *s == Scenario::NewSyn)
                    })
                    .collect(),
            })
            .collect();
        // Programs alternate frame by frame (their order rotating), so a
        // change of the machine's load during a round touches them alike;
        // the scenarios' order rotates from round to round.
        let progs: Vec<Prog> = Prog::ALL
            .into_iter()
            .filter(|p| *p != Prog::Katran || loaded.katran.is_some())
            .collect();
        let mut line = Vec::new();
        for k in 0..scenarios.len() {
            let si = scenarios[(round + k) % scenarios.len()] as usize;
            let mut ns: Vec<Vec<u64>> = vec![Vec::with_capacity(runs); Prog::ALL.len()];
            for i in 0..runs {
                let frame = &frames[si][i % frames[si].len()];
                for j in 0..progs.len() {
                    let p = progs[(i + j) % progs.len()];
                    let prog = loaded.program(p)?.ok_or("a program not loaded")?;
                    ns[p as usize].push(run_once(prog, frame, &mut out)?.2);
                }
            }
            for p in &progs {
                let v = trimmed_mean(&mut ns[*p as usize]);
                samples[si][*p as usize].push(v);
                line.push(format!("{} {}: {v:.0}", p.name(), Scenario::ALL[si].name()));
            }
        }
        println!("  test_run round {}: {} ns", round + 1, line.join(", "));
    }
    let new_flows = scenarios
        .iter()
        .filter(|s| **s != Scenario::Established)
        .count();
    let inserted = 1 + new_flows * rounds * runs;
    let mut flows = vec![
        (Prog::Floor, floor_flows(&mut loaded.floor)?, inserted),
        (Prog::Xdpkit, xdpkit_flows(&mut loaded.xdpkit)?, inserted),
    ];
    if let Some(k) = &loaded.katran {
        flows.push((Prog::Katran, k.flows(CPU)?, inserted));
    }
    Ok(TestRunNs {
        rounds: samples,
        flows,
    })
}

/// Mean of the middle 80% (the kernel's clock ticks in steps of about
/// 10 ns here, so a median of single runs moves by whole steps; the tails
/// are interrupts and the like).
fn trimmed_mean(v: &mut [u64]) -> f64 {
    v.sort_unstable();
    let cut = v.len() / 10;
    let mid = &v[cut..v.len() - cut];
    mid.iter().sum::<u64>() as f64 / mid.len().max(1) as f64
}

fn xdpkit_flows(alone: &mut Alone) -> BoxResult<usize> {
    Ok(xdpkit::programs::balancer::flows::dump(alone.maps())?.len())
}

/// The floor's flows: IPv4 only, in the balancer's IPv4 flow table.
fn floor_flows(ebpf: &mut Ebpf) -> BoxResult<usize> {
    use xdpkit_common::balancer::{FlowKey4, FlowReal, LB_FLOWS4};
    Ok(xdpkit::maps::batch::dump::<FlowKey4, FlowReal>(ebpf, LB_FLOWS4, usize::MAX)?.len())
}

/// The floor program with the balancer's VIP, ring, reals and settings
/// (the same maps by name and type).
fn load_floor(t: &tables::Tables) -> BoxResult<Ebpf> {
    use xdpkit_common::balancer::{Real, Vip, VipKey, LB_CONFIG, LB_REALS, LB_RINGS, LB_VIPS};
    let mut ebpf = xdpkit::bench::LB_FLOOR.load()?;
    {
        let p: &mut Xdp = ebpf
            .program_mut(xdpkit::bench::LB_FLOOR_SYMBOL)
            .ok_or("lb_floor holds no program")?
            .try_into()?;
        p.load()?;
    }
    let map = |ebpf: &mut Ebpf, name: &str| -> BoxResult<aya::maps::MapData> {
        let taken = ebpf
            .take_map(name)
            .ok_or(format!("lb_floor has no {name}"))?;
        Ok(match taken {
            aya::maps::Map::HashMap(m) | aya::maps::Map::Array(m) => m,
            _ => return Err(format!("{name}: an unexpected map type").into()),
        })
    };
    let mut vips: aya::maps::HashMap<_, VipKey, Vip> =
        aya::maps::HashMap::try_from(aya::maps::Map::HashMap(map(&mut ebpf, LB_VIPS)?))?;
    for (k, v) in &t.vips {
        vips.insert(k, v, 0)?;
    }
    let mut reals: aya::maps::Array<_, Real> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map(&mut ebpf, LB_REALS)?))?;
    for (i, r) in t.reals.iter().enumerate() {
        reals.set(i as u32, r, 0)?;
    }
    let mut rings: aya::maps::Array<_, u32> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map(&mut ebpf, LB_RINGS)?))?;
    for (base, ring) in &t.rings {
        for (i, slot) in ring.iter().enumerate() {
            rings.set(base + i as u32, slot, 0)?;
        }
    }
    let mut config: aya::maps::Array<_, LbConfig> =
        aya::maps::Array::try_from(aya::maps::Map::Array(map(&mut ebpf, LB_CONFIG)?))?;
    config.set(0, t.config, 0)?;
    Ok(ebpf)
}

/// Both balancers do the same job on `frame` (the first run inserts the
/// established flow): `XDP_TX`, an outer IPv4 header (IPIP) toward one of
/// the reals, the client's packet whole inside, to the gateway's MAC.
fn check_output(loaded: &mut Loaded, setup: &Setup, frame: &[u8]) -> BoxResult<()> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut outputs = Vec::new();
    for p in [Prog::Floor, Prog::Xdpkit, Prog::Katran] {
        let Some(prog) = loaded.program(p)? else {
            continue;
        };
        let (code, len, _) = run_once(prog, frame, &mut out)?;
        let o = &out[..len];
        let ok = code == xdpkit::XdpAction::Tx as u32
            && o.len() == frame.len() + 20
            && o[..6] == CLIENT_MAC
            && o[12..14] == [0x08, 0x00]
            && o[23] == 4
            && setup.reals.iter().any(|r| o[30..34] == r.octets())
            && o[34..] == frame[14..];
        if !ok {
            return Err(format!(
                "{} does not send the frame encapsulated toward a real (code {code}, {} bytes out): \
                 the comparison would be unfair",
                p.name(),
                o.len()
            )
            .into());
        }
        outputs.push(o.to_vec());
    }
    // The floor does the balancer's job to the byte (same real, outer
    // source, checksum): it is a floor of that job, not of an easier one.
    if outputs[0] != outputs[1] {
        return Err(format!(
            "{} and {} send different bytes: {:02x?} and {:02x?}",
            Prog::Floor.name(),
            Prog::Xdpkit.name(),
            &outputs[0][..34],
            &outputs[1][..34]
        )
        .into());
    }
    Ok(())
}
