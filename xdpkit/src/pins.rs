//! xdpkit's state on bpffs: one directory per interface,
//! `/sys/fs/bpf/xdpkit/<ifname>/`, holding the XDP link and the program's maps.
//! Files are mode 0600, the directory 0700; detach removes the directory.
//!
//! bpffs is one tree for every network namespace, so two xdpkit instances
//! managing interfaces of the same name in different namespaces (hosts of
//! a lab, containers) each set their own root with `XDPKIT_PIN_ROOT`.

use std::{
    fs::{self, File},
    io::{self, ErrorKind},
    os::fd::AsRawFd as _,
    os::unix::fs::{DirBuilderExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
};

use crate::{iface, Error, Result};

/// Where bpffs is mounted.
pub const BPFFS: &str = "/sys/fs/bpf";
/// xdpkit's directory on bpffs.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdpkit";
/// The environment variable that moves [`PIN_ROOT`] (a directory on bpffs).
pub const PIN_ROOT_ENV: &str = "XDPKIT_PIN_ROOT";

/// xdpkit's directory on bpffs: [`PIN_ROOT`], or `XDPKIT_PIN_ROOT`.
pub fn pin_root() -> &'static Path {
    static ROOT: std::sync::LazyLock<PathBuf> = std::sync::LazyLock::new(|| {
        std::env::var_os(PIN_ROOT_ENV)
            .filter(|v| !v.is_empty())
            .map_or_else(|| PathBuf::from(PIN_ROOT), PathBuf::from)
    });
    &ROOT
}

/// Pin file of the bpf_link that keeps the program attached.
pub const LINK: &str = "link";
/// Pin file of the interface's chain of stages (PROG_ARRAY).
pub const CHAIN: &str = "chain";
/// Pin file of the root's state: which half of the chain runs, and what.
pub const ROOT: &str = "root";
/// Pin file of a stage's per-action counters (in the stage's directory).
pub const STATS: &str = "stats";
/// Pin file of `redirect`'s DEVMAP.
pub const REDIRECT: &str = "redirect";
/// Pin file of the dump settings (`xdpkit dump`).
pub const DUMP_CONFIG: &str = "dump_cfg";
/// Pin file of the dump ring buffer.
pub const DUMP_RING: &str = "dump_ring";
/// Pin file of the interface's AF_XDP sockets by RX queue (XSKMAP).
pub const XSKS: &str = "xsks";

/// The pin directory of one interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir {
    ifname: String,
    path: PathBuf,
}

impl PinDir {
    /// The directory for `ifname` (not created).
    pub fn new(ifname: &str) -> Result<PinDir> {
        Self::under(pin_root(), ifname)
    }

    /// The directory for `ifname` below another root (tests use a private one).
    pub fn under(root: &Path, ifname: &str) -> Result<PinDir> {
        iface::validate_name(ifname)?;
        Ok(PinDir {
            ifname: ifname.to_string(),
            path: root.join(ifname),
        })
    }

    /// Every interface directory that exists under [`PIN_ROOT`], sorted by name.
    pub fn all() -> Result<Vec<PinDir>> {
        let entries = match fs::read_dir(pin_root()) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(pin_error("cannot list", pin_root(), source)),
        };
        let mut dirs: Vec<PinDir> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter_map(|name| PinDir::new(&name).ok())
            .collect();
        dirs.sort_by(|a, b| a.ifname.cmp(&b.ifname));
        Ok(dirs)
    }

    /// The directory of one stage (program) of this interface:
    /// `<root>/<ifname>/<program>/`, holding its counters and maps.
    pub fn stage(&self, program: &str) -> PinDir {
        PinDir {
            ifname: self.ifname.clone(),
            path: self.path.join(program),
        }
    }

    /// The interface this directory belongs to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// The directory itself.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Path of one pinned object in the directory.
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    /// Whether the directory holds a pinned link (xdpkit attached something).
    pub fn has_link(&self) -> bool {
        self.file(LINK).exists()
    }

    /// Creates the directory (and [`PIN_ROOT`]) with mode 0700.
    /// Returns whether it was newly made, so a failed attach removes only what it made.
    pub fn create(&self) -> Result<bool> {
        if self.path.is_dir() {
            return Ok(false);
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.path)
            .map_err(|source| pin_error("cannot create", &self.path, source))?;
        Ok(true)
    }

    /// Restricts a freshly pinned object to its owner (0600).
    pub fn restrict(&self, name: &str) -> Result<()> {
        let path = self.file(name);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600))
            .map_err(|source| pin_error("cannot chmod", &path, source))
    }

    /// Removes one pinned object; a missing one is not an error.
    pub fn unpin(&self, name: &str) -> Result<()> {
        let path = self.file(name);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(pin_error("cannot unpin", &path, source)),
        }
    }

    /// Removes the directory and everything in it, then [`PIN_ROOT`] if that is now empty.
    pub fn remove(&self) -> Result<()> {
        match fs::remove_dir_all(&self.path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(source) => return Err(pin_error("cannot remove", &self.path, source)),
        }
        if let Some(root) = self.path.parent() {
            // Fails harmlessly while other interfaces still have state.
            let _ = fs::remove_dir(root);
        }
        Ok(())
    }
}

/// The writers' lock of an interface (an flock on its pin directory): one
/// xdpkit process changes an interface at a time. Readers never take it.
pub struct IfaceLock {
    file: File,
    /// What one step of a change read under this lock, for a later step
    /// of the same change (see [`IfaceLock::keep`]).
    kept: std::sync::Mutex<Option<Box<dyn std::any::Any + Send>>>,
}

impl IfaceLock {
    /// Waits for and takes the lock of `dir` (which must exist).
    pub fn take(dir: &PinDir) -> Result<IfaceLock> {
        let file = File::open(dir.path()).map_err(|source| Error::Pin {
            what: "cannot open",
            path: dir.path().to_path_buf(),
            source,
        })?;
        // SAFETY: a valid fd; flock blocks until no other xdpkit holds it.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::Pin {
                what: "cannot lock",
                path: dir.path().to_path_buf(),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(IfaceLock::from_shared(file))
    }

    /// The lock held through `file`, a handle from [`IfaceLock::share`].
    pub(crate) fn from_shared(file: File) -> IfaceLock {
        IfaceLock {
            file,
            kept: std::sync::Mutex::new(None),
        }
    }

    /// Keeps `value`, read from the pinned maps while this lock is held,
    /// for [`take_kept`](Self::take_kept): no other writer can change what
    /// it was read from until the lock is released, and it is dropped
    /// with the lock. Saves reading a million rules twice in one apply.
    pub(crate) fn keep<T: std::any::Any + Send>(&self, value: T) {
        if let Ok(mut kept) = self.kept.lock() {
            *kept = Some(Box::new(value));
        }
    }

    /// The value kept with [`keep`](Self::keep), if it is a `T`; taken,
    /// so it serves once.
    pub(crate) fn take_kept<T: std::any::Any + Send>(&self) -> Option<T> {
        let kept = self.kept.lock().ok()?.take()?;
        kept.downcast::<T>().ok().map(|b| *b)
    }

    /// Another handle on the same lock (same open file), for a writer
    /// called while this one is held.
    pub fn share(&self) -> Result<File> {
        self.file.try_clone().map_err(|source| Error::Syscall {
            call: "dup of the interface lock",
            source,
        })
    }
}

fn pin_error(what: &'static str, path: &Path, source: io::Error) -> Error {
    Error::Pin {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Whether a bpf filesystem is mounted at [`BPFFS`].
pub fn bpffs_mounted() -> bool {
    fs::read_to_string("/proc/self/mounts")
        .map(|mounts| {
            mounts.lines().any(|line| {
                let mut fields = line.split_whitespace();
                let (_, mountpoint, fstype) = (fields.next(), fields.next(), fields.next());
                mountpoint == Some(BPFFS) && fstype == Some("bpf")
            })
        })
        .unwrap_or(false)
}

/// Mounts bpffs at [`BPFFS`] unless it already is.
pub fn ensure_bpffs() -> Result<()> {
    if bpffs_mounted() {
        return Ok(());
    }
    let source = c"bpf";
    let target = c"/sys/fs/bpf";
    // SAFETY: all pointers are valid NUL-terminated strings; data may be null.
    let ret = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if ret != 0 {
        return Err(Error::Bpffs(io::Error::last_os_error()));
    }
    // Pins live as long as this mount. Most systems mount bpffs at boot,
    // so a missing one often means a mount namespace of this command's own
    // (`ip netns exec` remounts /sys), gone when the command ends.
    tracing::warn!(
        "bpffs was not mounted at {BPFFS}: mounted it. If this runs under `ip netns exec` (which remounts /sys), what xdpkit pins and attaches is gone when the command ends: enter only the network namespace instead (`nsenter --net=/run/netns/NAME xdpkit ...`)"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_root() {
        let dir = PinDir::new("veth0").unwrap();
        assert_eq!(dir.path(), Path::new("/sys/fs/bpf/xdpkit/veth0"));
        assert_eq!(dir.file(LINK), Path::new("/sys/fs/bpf/xdpkit/veth0/link"));
        assert!(PinDir::new("../etc").is_err());
    }

    #[test]
    fn create_restrict_and_remove_on_a_plain_directory() {
        let root = std::env::temp_dir().join(format!("xdpkit-pins-{}", std::process::id()));
        let dir = PinDir::under(&root, "eth9").unwrap();
        assert!(dir.create().unwrap());
        assert!(!dir.create().unwrap(), "second create reports existing dir");
        let mode = fs::metadata(dir.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        fs::write(dir.file(STATS), b"x").unwrap();
        dir.restrict(STATS).unwrap();
        let mode = fs::metadata(dir.file(STATS)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        dir.unpin(LINK).unwrap();
        dir.remove().unwrap();
        assert!(!root.exists(), "empty root removed too");
    }
}
