//! Katran's balancer (facebookincubator/katran, `katran/lib/bpf/balancer.bpf.c`)
//! as an object the user built: loaded with aya and given the same VIP and
//! reals as xdpkit's, map by map as Katran's own tester fills them
//! (`vip_map`, `reals`, `ch_rings`, `ctl_array`), plus a flow table per CPU
//! in `lru_mapping` as Katran's production start-up (`KatranLb::initLrus`
//! with forwarding cores) puts there. The layouts are those of
//! `balancer_structs.h`; the constants those of `balancer_consts.h`.

use std::{net::Ipv4Addr, path::Path};

use aya::{
    maps::{Array, ArrayOfMaps, HashMap, MapData},
    programs::Xdp,
    Ebpf, EbpfLoader, Pod,
};

use super::BoxResult;

/// `balancer_consts.h`: slots of each VIP's ring (Katran's is fixed).
pub const RING_SIZE: u32 = 65_537;
/// The program's name in the object.
const PROGRAM: &str = "balancer_ingress";
/// `BPF_MAP_TYPE_LRU_HASH`.
const LRU_HASH: u32 = 9;

/// `struct vip_definition`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VipDefinition {
    addr: [u8; 16],
    /// Network byte order, as the program compares it with the frame's.
    port: u16,
    proto: u8,
    pad: u8,
}

/// `struct vip_meta`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct VipMeta {
    flags: u32,
    vip_num: u32,
}

/// `struct real_definition`: flags 0 is an IPv4 real (IPIP toward it).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RealDefinition {
    dst: [u8; 16],
    flags: u8,
    pad: [u8; 3],
}

/// `struct ctl_value`: slot 0 holds the next hop's MAC.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CtlValue {
    value: [u8; 8],
}

/// `struct flow_key` (the flow tables' key).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct FlowKey {
    src: [u8; 16],
    dst: [u8; 16],
    ports: u32,
    proto: u8,
    pad: [u8; 3],
}

/// `struct real_pos_lru` (the flow tables' value).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RealPosLru {
    pos: u32,
    pad: u32,
    atime: u64,
}

// SAFETY: plain #[repr(C)] structs of integers and byte arrays, padding
// spelled out as fields, so every bit pattern is valid.
unsafe impl Pod for VipDefinition {}
// SAFETY: as above.
unsafe impl Pod for VipMeta {}
// SAFETY: as above.
unsafe impl Pod for RealDefinition {}
// SAFETY: as above.
unsafe impl Pod for CtlValue {}
// SAFETY: as above.
unsafe impl Pod for FlowKey {}
// SAFETY: as above.
unsafe impl Pod for RealPosLru {}

type FlowTable = HashMap<MapData, FlowKey, RealPosLru>;

/// What Katran is given.
pub struct KatranVip {
    /// The VIP (TCP).
    pub vip: Ipv4Addr,
    /// Its port.
    pub port: u16,
    /// The reals, in the order of `ring`'s indexes.
    pub reals: Vec<Ipv4Addr>,
    /// The VIP's ring of [`RING_SIZE`] slots: indexes into `reals`.
    pub ring: Vec<u32>,
    /// MAC of the next hop (Katran sends every frame there).
    pub gateway: [u8; 6],
    /// Entries of each CPU's flow table.
    pub flows_per_cpu: u32,
}

/// Katran's balancer loaded, its maps filled.
pub struct Katran {
    ebpf: Ebpf,
    /// The per-CPU flow tables, by CPU (kept open for [`Katran::flows`]).
    lrus: Vec<FlowTable>,
}

impl Katran {
    /// Loads the object at `path` and fills its maps for `v`.
    pub fn load(path: &Path, v: &KatranVip) -> BoxResult<Katran> {
        if v.ring.len() != RING_SIZE as usize {
            return Err(format!(
                "Katran's rings have {RING_SIZE} slots, not {}",
                v.ring.len()
            )
            .into());
        }
        let mut ebpf = EbpfLoader::new()
            .load_file(path)
            .map_err(|e| format!("loading Katran's object {}: {e}", path.display()))?;
        let prog: &mut Xdp = ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| {
                format!(
                    "{}: no program {PROGRAM} (is it katran/lib/bpf/balancer.bpf.c?)",
                    path.display()
                )
            })?
            .try_into()?;
        prog.load()
            .map_err(|e| format!("the kernel refused Katran's {PROGRAM}: {e}"))?;

        let mut key = VipDefinition {
            port: v.port.to_be(),
            proto: 6,
            ..VipDefinition::default()
        };
        key.addr[..4].copy_from_slice(&v.vip.octets());
        let mut vips: HashMap<_, VipDefinition, VipMeta> =
            HashMap::try_from(map(&mut ebpf, "vip_map")?)?;
        vips.insert(
            key,
            VipMeta {
                flags: 0,
                vip_num: 0,
            },
            0,
        )?;

        // Katran's real ids start at 1 (0 marks an unset ring slot).
        let mut reals: Array<_, RealDefinition> = Array::try_from(map(&mut ebpf, "reals")?)?;
        for (i, r) in v.reals.iter().enumerate() {
            let mut real = RealDefinition::default();
            real.dst[..4].copy_from_slice(&r.octets());
            reals.set(i as u32 + 1, real, 0)?;
        }
        // VIP number 0: its ring is the first RING_SIZE slots.
        let mut rings: Array<_, u32> = Array::try_from(map(&mut ebpf, "ch_rings")?)?;
        for (slot, real) in v.ring.iter().enumerate() {
            rings.set(slot as u32, real + 1, 0)?;
        }
        let mut ctl: Array<_, CtlValue> = Array::try_from(map(&mut ebpf, "ctl_array")?)?;
        let mut mac = CtlValue::default();
        mac.value[..6].copy_from_slice(&v.gateway);
        ctl.set(0, mac, 0)?;

        // One LRU hash per CPU, as Katran's start-up makes for each
        // forwarding core (without them every CPU shares `fallback_cache`,
        // 1,000 entries: the path Katran's unit tests take).
        let cpus = aya::util::nr_cpus().map_err(|(what, e)| format!("{what}: {e}"))?;
        let mut lrus = Vec::with_capacity(cpus);
        let mut mapping: ArrayOfMaps<_, FlowTable> =
            ArrayOfMaps::try_from(map(&mut ebpf, "lru_mapping")?)?;
        for cpu in 0..cpus {
            let data = MapData::create(
                aya_obj::Map::new_from_params(
                    LRU_HASH,
                    std::mem::size_of::<FlowKey>() as u32,
                    std::mem::size_of::<RealPosLru>() as u32,
                    v.flows_per_cpu,
                    0,
                ),
                &format!("katran_lru{cpu}"),
                None,
            )?;
            let lru = FlowTable::try_from(aya::maps::Map::LruHashMap(data))?;
            mapping.set(cpu as u32, &lru, 0)?;
            lrus.push(lru);
        }
        Ok(Katran { ebpf, lrus })
    }

    /// The program, for test runs.
    pub fn program(&mut self) -> BoxResult<&mut Xdp> {
        Ok(self
            .ebpf
            .program_mut(PROGRAM)
            .ok_or("Katran's program is gone")?
            .try_into()?)
    }

    /// Flows in CPU `cpu`'s flow table.
    pub fn flows(&self, cpu: usize) -> BoxResult<usize> {
        let lru = self.lrus.get(cpu).ok_or("no such CPU")?;
        Ok(lru.keys().filter(Result::is_ok).count())
    }
}

fn map<'a>(ebpf: &'a mut Ebpf, name: &str) -> BoxResult<&'a mut aya::maps::Map> {
    ebpf.map_mut(name)
        .ok_or_else(|| format!("Katran's object has no map {name}: is it balancer.bpf.c?").into())
}
