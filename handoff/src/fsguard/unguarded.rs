//! Mounted filesystems the guard cannot protect: those on device-mapper
//! (LVM, dm-crypt/LUKS), md RAID or a loop device mounted read-write. The
//! capture kernel sets up none of these, so it cannot read them to record
//! their fingerprints; it records them as unreadable, and every resume of
//! the image is then refused, which the user would learn only after the
//! power-off. `kjump hibernate` refuses up front instead, and `kjump
//! check` says so. A loop device mounted read-only only (a squashfs of a
//! snap, an ISO image) is left out of the guard: the saved kernel cannot
//! have written it ([`read_only_loops`]).

use std::fmt;
use std::path::{Path, PathBuf};

use super::{mounts, Mount};

/// A block layer the capture kernel does not set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layer {
    /// device-mapper: LVM, dm-crypt/LUKS, dm-raid, multipath.
    DeviceMapper,
    /// md software RAID.
    Md,
    /// A loop device, mounted read-write.
    Loop,
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layer::DeviceMapper => "device-mapper",
            Layer::Md => "md",
            Layer::Loop => "a loop device",
        })
    }
}

/// A mounted filesystem on a device the capture kernel cannot read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unguarded {
    /// Where it is mounted.
    pub mount_point: String,
    /// The mount source, as /proc/self/mountinfo names it.
    pub source: String,
    /// The device node the source resolves to, when it is another name
    /// (`/dev/mapper/vg-root` -> `/dev/dm-0`).
    pub node: Option<String>,
    /// The layer it is on.
    pub layer: Layer,
}

impl fmt::Display for Unguarded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {} (", self.mount_point, self.source)?;
        if let Some(node) = &self.node {
            write!(f, "{node}, ")?;
        }
        write!(f, "{})", self.layer)
    }
}

/// The mounts the guard cannot protect; [`fmt::Display`] says why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnguardedMounts(pub Vec<Unguarded>);

impl fmt::Display for UnguardedMounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.0.iter().map(Unguarded::to_string).collect();
        write!(
            f,
            "{}: mounted from device-mapper or md, which the capture kernel cannot read \
             through, so it cannot record their state and every resume would be refused (the \
             stale-filesystem guard could not check that they are unchanged)",
            list.join(", ")
        )
    }
}

/// The mounts in `mountinfo` (/proc/self/mountinfo text) that the guard
/// cannot protect, found through this system's /dev and /sys.
pub fn unguarded(mountinfo: &str) -> UnguardedMounts {
    let resolve = |source: &str| std::fs::canonicalize(source).ok();
    unguarded_in(mountinfo, Path::new("/sys/class/block"), &resolve)
}

/// [`unguarded`], with the sysfs directory of block devices and the
/// resolution of a source's symlinks given.
fn unguarded_in(
    mountinfo: &str,
    sys_block: &Path,
    resolve: &dyn Fn(&str) -> Option<PathBuf>,
) -> UnguardedMounts {
    let read_only_loops = read_only_loops(mountinfo);
    let mut out = Vec::new();
    for Mount { point, source, .. } in mounts(mountinfo) {
        if !source.starts_with("/dev/") || read_only_loops.iter().any(|l| l == source) {
            continue;
        }
        let node = resolve(source)
            .map(|p| p.to_string_lossy().into_owned())
            .filter(|n| n != source);
        let name = node.as_deref().unwrap_or(source);
        let layer = layer_of(source)
            .or_else(|| layer_of(name))
            .or_else(|| layer_in_sysfs(sys_block, name));
        if let Some(layer) = layer {
            out.push(Unguarded {
                mount_point: unescape(point),
                source: source.to_string(),
                node,
                layer,
            });
        }
    }
    UnguardedMounts(out)
}

/// The layer a device node's name says: /dev/dm-N, /dev/mapper/NAME,
/// /dev/mdN, /dev/md/NAME, /dev/loopN.
fn layer_of(node: &str) -> Option<Layer> {
    if node.starts_with("/dev/dm-") || node.starts_with("/dev/mapper/") {
        Some(Layer::DeviceMapper)
    } else if node.starts_with("/dev/md") {
        Some(Layer::Md)
    } else if node.starts_with("/dev/loop") {
        Some(Layer::Loop)
    } else {
        None
    }
}

/// Loop devices (`/dev/loopN` sources) that `mountinfo` shows mounted, and
/// only read-only (the mount's options or the filesystem's say `ro`):
/// the guard leaves them out.
pub(super) fn read_only_loops(mountinfo: &str) -> Vec<String> {
    let mut rw: Vec<&str> = Vec::new();
    let mut ro: Vec<&str> = Vec::new();
    for m in mounts(mountinfo).filter(|m| m.source.starts_with("/dev/loop")) {
        let read_only = [m.options, m.super_options]
            .iter()
            .any(|o| o.split(',').any(|w| w == "ro"));
        if read_only {
            ro.push(m.source);
        } else {
            rw.push(m.source);
        }
    }
    let mut out: Vec<String> = Vec::new();
    for l in ro.into_iter().filter(|l| !rw.contains(l)) {
        if !out.iter().any(|o| o == l) {
            out.push(l.to_string());
        }
    }
    out
}

/// The layer sysfs shows for the device node `node`: a `dm` or `md`
/// directory under /sys/class/block/NAME.
fn layer_in_sysfs(sys_block: &Path, node: &str) -> Option<Layer> {
    let dir = sys_block.join(Path::new(node).file_name()?);
    if dir.join("dm").is_dir() {
        Some(Layer::DeviceMapper)
    } else if dir.join("md").is_dir() {
        Some(Layer::Md)
    } else {
        None
    }
}

/// A mountinfo path with its octal escapes (`\040` for a space) undone.
fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') << 6 | (d[1] - b'0') << 3 | (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 27 0:21 / /proc rw - proc proc rw
30 1 254:1 / / rw,relatime - ext4 /dev/mapper/vg-root rw
31 30 8:1 / /boot rw - ext4 /dev/sda1 rw
32 30 9:127 / /srv rw - xfs /dev/md127 rw
33 30 254:3 / /home/a\\040b rw - ext4 /dev/vg/home rw
34 30 259:2 / /data rw - btrfs /dev/nvme0n1p2 rw
35 30 0:40 / /tmp rw - tmpfs tmpfs rw
36 30 254:5 / /var rw - ext4 /dev/disk/by-uuid/1234 rw
";

    #[test]
    fn mounts_on_device_mapper_and_md_are_named() {
        let sys = std::env::temp_dir().join(format!("kjump-unguarded-{}", std::process::id()));
        // /dev/disk/by-uuid/1234 is dm-5, known as one only from sysfs;
        // nvme0n1p2 has a sysfs directory without dm or md.
        std::fs::create_dir_all(sys.join("dm-5/dm")).unwrap();
        std::fs::create_dir_all(sys.join("nvme0n1p2/holders")).unwrap();
        let resolve = |source: &str| match source {
            "/dev/mapper/vg-root" => Some(PathBuf::from("/dev/dm-0")),
            "/dev/vg/home" => Some(PathBuf::from("/dev/dm-3")),
            "/dev/disk/by-uuid/1234" => Some(PathBuf::from("/dev/dm-5")),
            _ => None,
        };
        let found = unguarded_in(MOUNTINFO, &sys, &resolve);
        std::fs::remove_dir_all(&sys).unwrap();
        let named: Vec<String> = found.0.iter().map(Unguarded::to_string).collect();
        assert_eq!(
            named,
            [
                "/ on /dev/mapper/vg-root (/dev/dm-0, device-mapper)",
                "/srv on /dev/md127 (md)",
                "/home/a b on /dev/vg/home (/dev/dm-3, device-mapper)",
                "/var on /dev/disk/by-uuid/1234 (/dev/dm-5, device-mapper)",
            ]
        );
        assert!(found.to_string().starts_with(
            "/ on /dev/mapper/vg-root (/dev/dm-0, device-mapper), /srv on /dev/md127 (md), "
        ));
        assert!(found.to_string().ends_with(
            "/dev/dm-5, device-mapper): mounted from device-mapper or md, which the capture \
             kernel cannot read through, so it cannot record their state and every resume would \
             be refused (the stale-filesystem guard could not check that they are unchanged)"
        ));
    }

    #[test]
    fn loop_devices_mounted_read_write_are_named_and_read_only_ones_left_out() {
        let text = "\
40 30 7:0 / /snap/core22/1380 ro,nodev,relatime - squashfs /dev/loop0 ro,errors=continue
41 30 7:1 / /mnt/img rw,relatime - ext4 /dev/loop1 rw
42 30 7:2 / /mnt/iso ro - iso9660 /dev/loop2 ro
43 30 7:2 / /mnt/iso2 rw - iso9660 /dev/loop2 ro
44 30 7:3 / /mnt/twice ro - ext4 /dev/loop3 rw
45 30 7:3 / /mnt/twice-rw rw - ext4 /dev/loop3 rw
";
        assert_eq!(read_only_loops(text), ["/dev/loop0", "/dev/loop2"]);
        let none = |_: &str| None;
        let found = unguarded_in(text, Path::new("/nonexistent"), &none);
        let named: Vec<String> = found.0.iter().map(Unguarded::to_string).collect();
        assert_eq!(
            named,
            [
                "/mnt/img on /dev/loop1 (a loop device)",
                "/mnt/twice on /dev/loop3 (a loop device)",
                "/mnt/twice-rw on /dev/loop3 (a loop device)",
            ]
        );
    }

    #[test]
    fn plain_disks_are_guarded() {
        let text = "30 1 254:1 / / rw - ext4 /dev/vda1 rw\n31 30 0:5 / /mnt rw - nfs srv:/x rw\n";
        let none = |_: &str| None;
        assert_eq!(
            unguarded_in(text, Path::new("/nonexistent"), &none),
            UnguardedMounts(vec![])
        );
    }

    #[test]
    fn octal_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b\011c\134d\08"), "/a b\tc\\d\\08");
    }
}
