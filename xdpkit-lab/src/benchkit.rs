//! The benchmark harness behind `cargo xtask bench ...`: a two-namespace
//! lab where each contender gets one core, trials with medians, and CSV and
//! PNG (plotters) output. Contenders run in turn in the same lab, so their
//! ratios are measured side by side.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use ipnet::{IpNet, Ipv4Net};

use xdpkit::trafficgen::{Generator, Sent};

use crate::lab::Lab;

/// Errors of the harness: anything, with its message.
pub type BenchResult<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The core the generator runs on.
pub const GEN_CPU: usize = 0;
/// The core the receiving veth's NAPI thread runs on.
pub const NAPI_CPU: usize = 1;

/// Namespaces `gen` and `dut` joined by a veth pair; the receiving end
/// polls in a threaded NAPI kernel thread pinned to [`NAPI_CPU`], the
/// generator runs on [`GEN_CPU`]: each contender in `dut` gets one core.
pub struct OneCoreLab {
    /// The namespaces.
    pub lab: Lab,
    /// Sending interface, in `gen`.
    pub gen_if: String,
    /// Receiving interface, in `dut`.
    pub dut_if: String,
}

impl OneCoreLab {
    /// Builds the lab (GRO on the receiving veth, threaded NAPI).
    pub fn new(prefix: &str, gen_if: &str, dut_if: &str, subnet: &str) -> BenchResult<OneCoreLab> {
        let net: Ipv4Net = subnet.parse()?;
        let mut hosts = net.hosts();
        let (gen_addr, dut_addr) = (
            format!(
                "{}/{}",
                hosts.next().ok_or("subnet too small")?,
                net.prefix_len()
            ),
            format!(
                "{}/{}",
                hosts.next().ok_or("subnet too small")?,
                net.prefix_len()
            ),
        );
        let lab = Lab::builder(prefix)
            .namespace("gen")
            .namespace("dut")
            .veth(
                "gen",
                gen_if,
                Some(&gen_addr),
                "dut",
                dut_if,
                Some(&dut_addr),
            )
            .gro("dut", dut_if)
            .build()?;
        set_threaded(&lab, "dut", dut_if)?;
        Ok(OneCoreLab {
            lab,
            gen_if: gen_if.to_string(),
            dut_if: dut_if.to_string(),
        })
    }

    /// Pins the receiving veth's NAPI threads to [`NAPI_CPU`] (again after
    /// an attach, which may recreate them).
    pub fn pin_napi(&self) -> BenchResult<()> {
        pin_napi_threads(&self.dut_if, NAPI_CPU)
    }

    /// Makes `gen` receive what `dut` sends back (its `XDP_TX`, or what it
    /// forwards out of the same veth) on [`GEN_CPU`]: NAPI on the sending
    /// veth (GRO on), threaded, so the return path does not run on the
    /// measured core. A veth schedules its peer's NAPI for `XDP_TX` frames
    /// only when the peer runs an XDP program: attach one to `gen_if` (a
    /// counting drop, or a pass to watch with tcpdump), then call
    /// [`OneCoreLab::pin_return_napi`] before each measurement.
    pub fn receive_back(&self) -> BenchResult<()> {
        run(self
            .lab
            .command("gen", "ethtool")
            .args(["-K", &self.gen_if, "gro", "on"]))?;
        set_threaded(&self.lab, "gen", &self.gen_if)?;
        self.pin_return_napi()
    }

    /// Pins the sending veth's NAPI threads to [`GEN_CPU`] and makes them
    /// real-time (SCHED_FIFO) there (see [`OneCoreLab::receive_back`]):
    /// the generator keeps its core busy, and a receive thread that waits
    /// for its turn lets the veth's 256-frame ring overflow, so frames the
    /// measured side sent would be lost on the way back. It sleeps when the
    /// ring is empty: the generator gets the rest of the core.
    pub fn pin_return_napi(&self) -> BenchResult<()> {
        pin_napi_threads(&self.gen_if, GEN_CPU)?;
        realtime_napi_threads(&self.gen_if)
    }

    /// Makes the receiving veth's NAPI threads real-time (SCHED_FIFO) on
    /// their core: a contender then has the core whatever else runs on the
    /// machine (the kernel still leaves others 5% of it), so a shared
    /// machine's builds do not decide the figures. After
    /// [`OneCoreLab::pin_napi`].
    pub fn realtime_napi(&self) -> BenchResult<()> {
        realtime_napi_threads(&self.dut_if)
    }

    /// Sends `frame` from `gen` at full speed for `d`, sources random in
    /// `sources` if given, from [`GEN_CPU`].
    pub fn send_for(
        &self,
        frame: &[u8],
        sources: Option<Ipv4Net>,
        d: Duration,
    ) -> BenchResult<Sent> {
        self.send_from(frame, sources.map(IpNet::V4), d)
    }

    /// [`OneCoreLab::send_for`] for IPv4 or IPv6 frames: sources random in
    /// `sources` (of the frame's family) if given.
    pub fn send_from(
        &self,
        frame: &[u8],
        sources: Option<IpNet>,
        d: Duration,
    ) -> BenchResult<Sent> {
        self.send(frame, sources, d)
    }

    fn send(&self, frame: &[u8], sources: Option<IpNet>, d: Duration) -> BenchResult<Sent> {
        let frame = frame.to_vec();
        let gen_if = self.gen_if.clone();
        let sent = self.lab.run_in("gen", move || {
            // Best effort: an unpinned generator only makes figures noisier.
            let _ = set_affinity(0, GEN_CPU);
            // The generator writes each frame's headers afresh, so a dut
            // that rewrites frames in place sees every one as built.
            Generator::with_sources(&gen_if, frame, sources)?.send_for(d)
        })??;
        Ok(sent)
    }
}

/// Turns on threaded NAPI for `ifname` in namespace `ns`.
fn set_threaded(lab: &Lab, ns: &str, ifname: &str) -> BenchResult<()> {
    // `ip netns exec` mounts the namespace's own /sys, where the veth is.
    run(Command::new("ip").args([
        "netns",
        "exec",
        &lab.ns_name(ns),
        "sh",
        "-c",
        &format!("echo 1 > /sys/class/net/{ifname}/threaded"),
    ]))
}

/// Pins every `napi/<ifname>-*` kernel thread to `cpu`.
pub fn pin_napi_threads(ifname: &str, cpu: usize) -> BenchResult<()> {
    let pids = napi_threads(ifname)?;
    if pids.is_empty() {
        return Err(format!("no napi/{ifname}-* kernel thread: threaded NAPI is off").into());
    }
    for pid in pids {
        set_affinity(pid, cpu)?;
    }
    Ok(())
}

/// Makes every `napi/<ifname>-*` kernel thread SCHED_FIFO (priority 50).
fn realtime_napi_threads(ifname: &str) -> BenchResult<()> {
    for pid in napi_threads(ifname)? {
        let param = libc::sched_param { sched_priority: 50 };
        // SAFETY: a valid sched_param; the call only reads it.
        if unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) } != 0 {
            return Err(format!(
                "SCHED_FIFO for napi/{ifname} (pid {pid}): {}",
                std::io::Error::last_os_error()
            )
            .into());
        }
    }
    Ok(())
}

/// The `napi/<ifname>-*` kernel threads.
fn napi_threads(ifname: &str) -> BenchResult<Vec<i32>> {
    let mut pids = Vec::new();
    for entry in std::fs::read_dir("/proc")?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with(&format!("napi/{ifname}")) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Builds the C anchor `src` (one of ../shared/perf/anchors) with clang-14
/// into `out_dir`; returns the object's path.
pub fn build_anchor(src: &Path, out_dir: &Path) -> BenchResult<PathBuf> {
    let stem = src
        .file_stem()
        .ok_or_else(|| format!("{}: not a C file", src.display()))?;
    let obj = out_dir.join(stem).with_extension("o");
    run(Command::new("clang-14")
        .args([
            "-O2",
            "-g",
            "-target",
            "bpf",
            "-I/usr/include/x86_64-linux-gnu",
            "-c",
        ])
        .arg(src)
        .arg("-o")
        .arg(&obj))
    .map_err(|e| {
        format!(
            "building the anchor {} ({e}): run `cargo xtask bootstrap`",
            src.display()
        )
    })?;
    Ok(obj)
}

/// Pins `pid` (0: this thread) to `cpu`.
pub fn set_affinity(pid: i32, cpu: usize) -> BenchResult<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET stays in bounds
    // for cpu < CPU_SETSIZE, and the call only reads the set.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(pid, std::mem::size_of_val(&set), &set) != 0 {
            return Err(format!(
                "pin pid {pid} to CPU {cpu}: {}",
                std::io::Error::last_os_error()
            )
            .into());
        }
    }
    Ok(())
}

/// Median, lowest and highest of a contender's trials.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Trials {
    /// Median.
    pub median: f64,
    /// Lowest.
    pub min: f64,
    /// Highest.
    pub max: f64,
}

/// Runs `trial` `n` times (at least once) and summarises the results.
pub fn trials(n: usize, mut trial: impl FnMut() -> BenchResult<f64>) -> BenchResult<Trials> {
    let mut values = (0..n.max(1))
        .map(|_| trial())
        .collect::<BenchResult<Vec<f64>>>()?;
    values.sort_by(f64::total_cmp);
    Ok(Trials {
        median: values[values.len() / 2],
        min: values[0],
        max: values[values.len() - 1],
    })
}

/// One bar of [`plot_bars`].
#[derive(Clone, Debug)]
pub struct Bar {
    /// Label on the left.
    pub label: String,
    /// Length, in Mpps.
    pub mpps: f64,
    /// Colour group (0 = the baseline's grey).
    pub group: usize,
}

const COLOURS: [(u8, u8, u8); 5] = [
    (90, 90, 90),
    (31, 119, 180),
    (214, 39, 40),
    (44, 160, 44),
    (255, 127, 14),
];

/// Horizontal bars in Mpps, each labelled with its ratio to `baseline`
/// (named `baseline_name`), written as a PNG.
pub fn plot_bars(
    bars: &[Bar],
    baseline: f64,
    baseline_name: &str,
    caption: &str,
    path: &Path,
) -> BenchResult<()> {
    let bars: Vec<ValueBar> = bars
        .iter()
        .map(|b| ValueBar {
            label: b.label.clone(),
            value: b.mpps,
            group: b.group,
            text: format!(
                "{:.2} Mpps ({:.2}x {baseline_name})",
                b.mpps,
                b.mpps / baseline
            ),
        })
        .collect();
    plot_value_bars(&bars, baseline, "Mpps", caption, path)
}

/// One bar of [`plot_value_bars`]: any unit, any text beside it.
#[derive(Clone, Debug)]
pub struct ValueBar {
    /// Label on the left.
    pub label: String,
    /// Length, in the chart's unit.
    pub value: f64,
    /// Colour group (0 = the baseline's grey).
    pub group: usize,
    /// Text written after the bar.
    pub text: String,
}

/// Horizontal bars of `unit` (the x axis reaches at least `min_top`),
/// each followed by its text, written as a PNG.
pub fn plot_value_bars(
    bars: &[ValueBar],
    min_top: f64,
    unit: &str,
    caption: &str,
    path: &Path,
) -> BenchResult<()> {
    use plotters::prelude::*;

    let font = std::fs::read("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
        .map_err(|e| format!("DejaVuSans.ttf (Debian's fonts-dejavu-core): {e}"))?;
    plotters::style::register_font("sans-serif", FontStyle::Normal, Box::leak(font.into()))
        .map_err(|_| "DejaVuSans.ttf is not a font plotters can read")?;
    if bars.is_empty() {
        return Err("nothing to plot".into());
    }
    let height = 120 + 40 * bars.len() as u32;
    let root = BitMapBackend::new(path, (1000, height)).into_drawing_area();
    root.fill(&WHITE)?;
    let top = bars.iter().map(|b| b.value).fold(min_top, f64::max) * 1.45;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(290)
        .build_cartesian_2d(0.0..top, (0..bars.len() - 1).into_segmented())?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .light_line_style(TRANSPARENT)
        .x_desc(unit)
        .y_labels(bars.len())
        .y_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) if *i < bars.len() => bars[bars.len() - 1 - i].label.clone(),
            _ => String::new(),
        })
        .label_style(("sans-serif", 15))
        .draw()?;
    for (i, b) in bars.iter().enumerate() {
        let y = bars.len() - 1 - i;
        let (r, g, bl) = COLOURS[b.group % COLOURS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [
                (0.0, SegmentValue::Exact(y)),
                (b.value, SegmentValue::Exact(y + 1)),
            ],
            RGBColor(r, g, bl).filled(),
        )))?;
        chart.draw_series(std::iter::once(Text::new(
            b.text.clone(),
            (b.value + top * 0.01, SegmentValue::CenterOf(y)),
            ("sans-serif", 14),
        )))?;
    }
    root.present()?;
    Ok(())
}

/// The workspace's directory (benchmarks write to its `target/bench` and
/// find `../shared` beside it).
pub fn workspace() -> BenchResult<PathBuf> {
    Ok(Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("xdpkit-lab sits in the workspace")?
        .to_path_buf())
}

/// Runs a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> BenchResult<()> {
    output(cmd).map(drop)
}

/// Runs a command and returns its stdout, failing with its stderr.
pub fn output(cmd: &mut Command) -> BenchResult<String> {
    let out = cmd
        .output()
        .map_err(|e| format!("{cmd:?}: {e} (run `cargo xtask bootstrap`)"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?)
}
