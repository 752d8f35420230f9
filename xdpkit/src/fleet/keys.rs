//! Where the fleet's keys live in etcd.

use super::FleetError;

/// Every key of the fleet starts here.
pub const ROOT: &str = "/xdpkit/";
/// Group layers.
pub const GROUPS: &str = "/xdpkit/groups/";
/// Host layers.
pub const HOSTS: &str = "/xdpkit/hosts/";
/// Agents' statuses.
pub const STATUS: &str = "/xdpkit/status/";
/// Configuration parts, by content id.
pub const BLOBS: &str = "/xdpkit/blobs/";

/// Checks a host or group name: it becomes one path element of a key.
pub fn check_name(what: &'static str, name: &str) -> Result<(), FleetError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        && name != "."
        && name != "..";
    if ok {
        Ok(())
    } else {
        Err(FleetError::BadName {
            what,
            name: name.to_string(),
        })
    }
}

/// The layer key of group `name`.
pub fn group(name: &str) -> String {
    format!("{GROUPS}{name}")
}

/// The layer key of host `name`.
pub fn host(name: &str) -> String {
    format!("{HOSTS}{name}")
}

/// The status key of host `name`.
pub fn status(name: &str) -> String {
    format!("{STATUS}{name}")
}

/// The prefix of content `id`'s parts.
pub fn blob(id: &str) -> String {
    format!("{BLOBS}{id}/")
}

/// Part `n` of content `id` (zero-padded: the parts sort in order).
pub fn part(id: &str, n: u32) -> String {
    format!("{BLOBS}{id}/{n:06}")
}

/// The layer keys of a host in merge order: its groups, then itself.
pub fn layers(host_name: &str, groups: &[String]) -> Vec<String> {
    groups
        .iter()
        .map(|g| group(g))
        .chain(std::iter::once(host(host_name)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_key_element() {
        for good in ["edge", "h1", "lb-01.fra", "A_b"] {
            check_name("host", good).unwrap();
        }
        for bad in ["", "a/b", "..", ".", "x y", &"a".repeat(65), "é"] {
            assert!(check_name("host", bad).is_err(), "{bad:?}");
        }
        assert_eq!(part("ab", 7), "/xdpkit/blobs/ab/000007");
        assert_eq!(
            layers("h1", &["edge".into(), "fra".into()]),
            [
                "/xdpkit/groups/edge",
                "/xdpkit/groups/fra",
                "/xdpkit/hosts/h1"
            ]
        );
    }
}
