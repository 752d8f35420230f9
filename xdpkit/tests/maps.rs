//! The batch map commands refuse key and value types of the wrong size
//! before any syscall, and move checked types both ways.

use std::os::fd::AsFd as _;

use xdpkit::{
    sys::{self, MapShape},
    Error,
};
use xdpkit_lab::lab::require_root;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

fn shape(map_type: u32, key_size: u32, value_size: u32) -> MapShape {
    MapShape {
        map_type,
        key_size,
        value_size,
        max_entries: 16,
        flags: 0,
    }
}

fn assert_layout(result: xdpkit::Result<impl std::fmt::Debug>, what: &str, map: usize, ty: usize) {
    match result {
        Err(e @ Error::MapLayout { .. }) => {
            let Error::MapLayout {
                what: w,
                map_bytes,
                type_bytes,
                ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*w, *map_bytes, *type_bytes), (what, map, ty), "{e}");
            assert!(!e.is_usage(), "a layout mismatch is internal (exit 1)");
            assert!(
                e.to_string().starts_with("internal error: map xk_layout"),
                "{e}"
            );
        }
        other => panic!("want MapLayout, got {other:?}"),
    }
}

#[test]
fn mismatched_key_or_value_size_is_refused() {
    if !require_root("mismatched_key_or_value_size_is_refused") {
        return;
    }
    // u32 keys, 8-byte values.
    let map = sys::map_create("xk_layout", shape(BPF_MAP_TYPE_HASH, 4, 8)).unwrap();
    let fd = map.as_fd();
    assert_layout(
        sys::map_update_batch::<u32, u32>(fd, &[1], &[7]),
        "value",
        8,
        4,
    );
    assert_layout(
        sys::map_update_batch::<u64, u64>(fd, &[1], &[7]),
        "key",
        4,
        8,
    );
    assert_layout(sys::map_dump::<u32, u32>(fd, 16), "value", 8, 4);
    assert_layout(sys::map_delete_batch::<u16>(fd, &[1]), "key", 4, 2);
    assert_layout(sys::hash_drain::<u32, [u8; 12]>(fd), "value", 8, 12);
    assert_layout(
        sys::map_dump_per_cpu::<u32, u64>(fd, 16),
        "per-CPU value",
        0,
        8,
    );
    // Nothing was written by the refused calls; the right types work.
    assert!(sys::map_dump::<u32, u64>(fd, 16).unwrap().is_empty());
    sys::map_update_batch::<u32, u64>(fd, &[1, 2], &[10, 20]).unwrap();
    let mut got = sys::map_dump::<u32, u64>(fd, 16).unwrap();
    got.sort();
    assert_eq!(got, vec![(1, 10), (2, 20)]);
    assert_eq!(sys::hash_drain::<u32, u64>(fd).unwrap(), 2);
}

#[test]
fn per_cpu_values_are_checked_per_slot() {
    if !require_root("per_cpu_values_are_checked_per_slot") {
        return;
    }
    let cpus = sys::possible_cpus().unwrap();
    let map = sys::map_create("xk_layout_pc", shape(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 4)).unwrap();
    let fd = map.as_fd();
    // One plain u32 per key is not what a per-CPU map copies.
    match sys::map_update_batch::<u32, u32>(fd, &[0], &[1]) {
        Err(Error::MapLayout { map_bytes, .. }) => assert_eq!(map_bytes, 8 * cpus),
        other => panic!("want MapLayout, got {other:?}"),
    }
    match sys::map_update_batch_per_cpu::<u32, u64>(fd, &[0], &vec![1; cpus]) {
        Err(Error::MapLayout { what, .. }) => assert_eq!(what, "value"),
        other => panic!("want MapLayout, got {other:?}"),
    }
    let values: Vec<u32> = (0..cpus as u32).collect();
    sys::map_update_batch_per_cpu::<u32, u32>(fd, &[3], &values).unwrap();
    let got = sys::map_dump_per_cpu::<u32, u32>(fd, 16).unwrap();
    assert_eq!(got[3], (3, values));
}
