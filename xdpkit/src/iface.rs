//! Interface names and indexes.

use std::ffi::CString;

use crate::{Error, Result};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME: usize = 15;

/// Rejects names that cannot be interfaces, before they reach a path or a syscall.
/// Also keeps pin paths (`/sys/fs/bpf/xdpkit/<ifname>`) inside their directory.
pub fn validate_name(name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_IFNAME {
        Some("longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("reserved")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match why {
        Some(why) => Err(Error::InvalidInterfaceName {
            name: name.to_string(),
            why,
        }),
        None => Ok(()),
    }
}

/// The ifindex of `name` in the calling thread's network namespace.
pub fn index(name: &str) -> Result<u32> {
    validate_name(name)?;
    let c_name = CString::new(name).map_err(|_| Error::InvalidInterfaceName {
        name: name.to_string(),
        why: "contains a NUL byte",
    })?;
    // SAFETY: c_name is a valid NUL-terminated string for the call's duration.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        return Err(Error::UnknownInterface {
            name: name.to_string(),
        });
    }
    Ok(index)
}

/// The name of interface `index`, if it exists.
pub fn name(index: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: buf has IF_NAMESIZE bytes as the call requires.
    let ret = unsafe { libc::if_indextoname(index, buf.as_mut_ptr()) };
    if ret.is_null() {
        return None;
    }
    // SAFETY: on success the kernel wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The MAC address of interface `name` in the calling thread's network
/// namespace. Asked of the kernel (RTM_GETLINK), not read from sysfs: a
/// process that entered a namespace with setns (`nsenter --net`) still
/// sees the sysfs of the namespace that mounted it, where the name is
/// missing or, worse, another interface.
pub fn mac(name: &str) -> Result<[u8; 6]> {
    let index = index(name)?;
    crate::netlink::mac_address(index)
        .map_err(|e| Error::Internal(format!("reading the MAC address of {name}: {e}")))?
        .ok_or_else(|| Error::InvalidArgument(format!("{name} has no Ethernet address")))
}

/// A MAC address written as six two-digit hex bytes separated by `:` or `-`
/// (`02:00:00:00:00:01`).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split([':', '-']);
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_names_that_could_escape_the_pin_directory() {
        for bad in [
            "",
            "..",
            ".",
            "a/b",
            "../../etc",
            "eth0:1",
            "with space",
            "sixteen-chars-xx",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["eth0", "veth-a_1", "lo", "fifteen-chars-x"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn loopback_resolves_and_unknown_does_not() {
        assert_eq!(name(index("lo").unwrap()).as_deref(), Some("lo"));
        assert!(matches!(
            index("nosuchif0"),
            Err(Error::UnknownInterface { .. })
        ));
    }
}
