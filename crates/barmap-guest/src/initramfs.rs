//! The guest's initramfs: a newc cpio archive with busybox, the VFIO
//! modules in load order, the barmap binary and an init script.

use crate::util::Result;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A newc ("070701") cpio writer.
pub struct Cpio<W: Write> {
    out: W,
    ino: u32,
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

impl<W: Write> Cpio<W> {
    /// A writer over `out`.
    pub fn new(out: W) -> Self {
        Cpio { out, ino: 1 }
    }

    fn entry(
        &mut self,
        name: &str,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> std::io::Result<()> {
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len(),
            0,
            0,
            rdev.0,
            rdev.1,
            namesize,
            0
        );
        self.ino += 1;
        self.out.write_all(header.as_bytes())?;
        self.out.write_all(name.as_bytes())?;
        self.out.write_all(&[0])?;
        self.pad(110 + namesize)?;
        self.out.write_all(data)?;
        self.pad(data.len())
    }

    fn pad(&mut self, len: usize) -> std::io::Result<()> {
        let n = (4 - len % 4) % 4;
        self.out.write_all(&[0u8; 3][..n])
    }

    /// A directory.
    pub fn dir(&mut self, name: &str) -> std::io::Result<()> {
        self.entry(name, S_IFDIR | 0o755, (0, 0), &[])
    }

    /// A regular file with `mode` permission bits.
    pub fn file(&mut self, name: &str, mode: u32, data: &[u8]) -> std::io::Result<()> {
        self.entry(name, S_IFREG | mode, (0, 0), data)
    }

    /// A symbolic link to `target`.
    pub fn symlink(&mut self, name: &str, target: &str) -> std::io::Result<()> {
        self.entry(name, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// A character device node.
    pub fn chardev(&mut self, name: &str, major: u32, minor: u32) -> std::io::Result<()> {
        self.entry(name, S_IFCHR | 0o600, (major, minor), &[])
    }

    /// Writes the trailer and returns the inner writer.
    pub fn finish(mut self) -> std::io::Result<W> {
        self.entry("TRAILER!!!", 0, (0, 0), &[])?;
        Ok(self.out)
    }
}

/// What goes into the initramfs.
pub struct Contents<'a> {
    /// The static busybox binary.
    pub busybox: &'a Path,
    /// Modules in load order.
    pub modules: &'a [PathBuf],
    /// The static barmap binary.
    pub barmap: &'a Path,
    /// Arguments for `barmap guest-run`.
    pub runner_args: &'a [String],
    /// Seconds the guest gives the runner before powering off.
    pub guest_timeout_s: u64,
    /// Further executable files: (path in the initramfs, host file), for
    /// programs and the shared libraries they load; parent directories are
    /// created.
    pub extra: &'a [(String, PathBuf)],
}

/// The parent directories of `paths` (relative, `/`-separated), each once,
/// parents first, leaving out those the archive always has.
pub fn parent_dirs<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut dirs: Vec<String> = Vec::new();
    for p in paths {
        let parts: Vec<&str> = p.split('/').filter(|c| !c.is_empty()).collect();
        for n in 1..parts.len() {
            let d = parts[..n].join("/");
            if !BASE_DIRS.contains(&d.as_str()) && !dirs.contains(&d) {
                dirs.push(d);
            }
        }
    }
    dirs.sort_by_key(|d| d.matches('/').count());
    dirs
}

/// Directories every initramfs has.
const BASE_DIRS: [&str; 6] = ["bin", "dev", "proc", "sys", "tmp", "modules"];

/// Writes the initramfs to `dest`.
pub fn write(dest: &Path, c: &Contents<'_>) -> Result<()> {
    let tmp = dest.with_extension("tmp");
    let f = std::io::BufWriter::new(fs::File::create(&tmp)?);
    let mut cpio = Cpio::new(f);
    for d in BASE_DIRS {
        cpio.dir(d)?;
    }
    for d in parent_dirs(c.extra.iter().map(|(p, _)| p.as_str())) {
        cpio.dir(&d)?;
    }
    for (dest, src) in c.extra {
        cpio.file(dest.trim_start_matches('/'), 0o755, &fs::read(src)?)?;
    }
    cpio.chardev("dev/console", 5, 1)?;
    cpio.chardev("dev/null", 1, 3)?;
    cpio.file("bin/busybox", 0o755, &fs::read(c.busybox)?)?;
    cpio.symlink("bin/sh", "busybox")?;
    for (i, m) in c.modules.iter().enumerate() {
        let name = m.file_name().and_then(|n| n.to_str()).unwrap_or("m.ko");
        cpio.file(&format!("modules/{i:02}-{name}"), 0o644, &fs::read(m)?)?;
    }
    cpio.file("barmap", 0o755, &fs::read(c.barmap)?)?;
    cpio.file(
        "init",
        0o755,
        init_script(c.runner_args, c.guest_timeout_s).as_bytes(),
    )?;
    let mut f = cpio.finish()?;
    f.flush()?;
    drop(f);
    fs::rename(tmp, dest)?;
    Ok(())
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The guest's /init: load the modules, bind edu, ivshmem-plain and igb to
/// vfio-pci, run the runner, and power off when it ends, when TAINT_DIE
/// shows that an oops killed a task (the rest of the runner then hangs), or
/// when the deadline passes.
pub fn init_script(runner_args: &[String], timeout_s: u64) -> String {
    let args: Vec<String> = runner_args.iter().map(|a| sh_quote(a)).collect();
    let m = crate::protocol::MARKER;
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for mod in /modules/*.ko; do
  insmod "$mod" || echo '{m} setup_error {{"step":"insmod","module":"'"${{mod##*/}}"'"}}'
done
for dev in /sys/bus/pci/devices/*; do
  id="$(cat "$dev/vendor"):$(cat "$dev/device")"
  case "$id" in
    0x1234:0x11e8|0x1af4:0x1110|0x8086:0x10c9)
      bdf="${{dev##*/}}"
      echo vfio-pci > "$dev/driver_override"
      [ -e "$dev/driver" ] && echo "$bdf" > "$dev/driver/unbind"
      echo "$bdf" > /sys/bus/pci/drivers_probe || echo '{m} setup_error {{"step":"bind","device":"'"$bdf"'"}}'
      ;;
  esac
done
/barmap guest-run {args} &
pid=$!
ticks=0
limit=$(({timeout_s} * 5))
while kill -0 $pid 2>/dev/null; do
  t=$(cat /proc/sys/kernel/tainted)
  if [ $((t & 128)) -ne 0 ]; then
    sleep 1
    echo '{m} taint {{"tainted":'"$t"'}}'
    break
  fi
  ticks=$((ticks + 1))
  if [ $ticks -ge $limit ]; then
    echo '{m} guest_timeout {{"seconds":{timeout_s}}}'
    break
  fi
  usleep 200000
done
sync
[ -e /dev/port ] || mknod /dev/port c 1 4
printf '\001' | dd of=/dev/port bs=1 seek={port} count=1 2>/dev/null
poweroff -f
"#,
        args = args.join(" "),
        port = crate::qemu::EXIT_PORT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cpio_archive_has_aligned_headers_and_a_trailer() {
        let mut c = Cpio::new(Vec::new());
        c.dir("bin").unwrap();
        c.file("init", 0o755, b"#!/bin/sh\n").unwrap();
        let bytes = c.finish().unwrap();
        assert!(bytes.starts_with(b"070701"));
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        assert!(text.contains("TRAILER!!!"));
        // The second header starts on a 4-byte boundary.
        let second = text[6..].find("070701").unwrap() + 6;
        assert_eq!(second % 4, 0);
    }

    #[test]
    fn parent_directories_come_once_and_parents_first() {
        let d = parent_dirs([
            "lib/x86_64-linux-gnu/libc.so.6",
            "lib64/ld-linux-x86-64.so.2",
            "lib/x86_64-linux-gnu/libuuid.so.1",
            "bin/extra",
        ]);
        assert_eq!(d, ["lib", "lib64", "lib/x86_64-linux-gnu"]);
    }

    #[test]
    fn the_init_script_quotes_runner_arguments() {
        let s = init_script(&["--scenario".into(), "it's".into()], 60);
        assert!(s.contains(r#"/barmap guest-run '--scenario' 'it'\''s' &"#));
        assert!(s.contains("limit=$((60 * 5))"));
        assert!(s.contains("$((t & 128))"));
        // Leaves through isa-debug-exit (port 0xf4 = 244) before poweroff.
        let exit = s.find("dd of=/dev/port bs=1 seek=244").unwrap();
        assert!(exit < s.find("poweroff -f").unwrap());
    }
}
