#!/bin/sh
# SPDX-License-Identifier: MIT
#
# QEMU 11.1's vfio-user-pci, a foreign vfio-user client, on devices that
# `barmap serve` holds: the ioat model and the default model (a 1 MiB
# memory BAR2). The guest (Debian's generic 6.1 kernel, its dca and
# ioatdma modules, examples/qemu_guest_vfio_user.c as /init) binds its own
# ioatdma to the ioat model (the driver's probe runs a DMA copy through the
# channel and checks it; with dmatest.ko, dmatest copies too), maps the
# default device's BAR2 through sysfs (QEMU maps the server's memfd
# there), checks a pattern, and touches the BAR every 100 ms. Then, from
# outside, `barmap ctl command-mem off` clears COMMAND.MEM: the server
# truncates the BAR's memfd, and QEMU's next access through its mapping
# gets SIGBUS, as its access through a vfio-pci mapping would after the
# kernel zaps it (vfio_pci_mmap_fault answers VM_FAULT_SIGBUS while memory
# is disabled). Passes when ioatdma binds, BAR2 passes, and QEMU dies of
# SIGBUS after the clear (never before it).
#
# Usage (as root, from the repository, after `cargo build --release -p
# barmap-cli` and one `BARMAP_QEMU=11.1 sh examples/qemu_vfio_pci.sh legacy
# ioat`, which unpacks QEMU 11.1 and the guest kernels into the cache):
#   sh examples/qemu_vfio_user.sh
# Environment: BARMAP (default target/release/barmap), BARMAP_CACHE
# (default ~/.cache/barmap/guest). With the kernel source that `barmap
# selftests-build` unpacks in the cache, dmatest.ko is built for the guest
# kernel and the guest runs 200 dmatest copies on the channel too.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
barmap=${BARMAP:-$here/../target/release/barmap}
cache=${BARMAP_CACHE:-$HOME/.cache/barmap/guest}
q10=$cache/qemu-10.0
q11=$cache/qemu-11.1
work=$cache/qemu-vfio-user
[ -x "$barmap" ] || { echo "no barmap at $barmap: cargo build --release -p barmap-cli" >&2; exit 2; }
[ -f "$q11/.unpacked" ] && [ -f "$q10/.generic" ] || {
	echo "no QEMU 11.1 or guest kernel in $cache: run BARMAP_QEMU=11.1 sh examples/qemu_vfio_pci.sh legacy ioat" >&2
	exit 2
}
mkdir -p "$work"
chmod 700 "$work"
vmlinuz=$(ls "$q10"/boot/vmlinuz-*-amd64 | grep -v cloud | head -n1)
modules=$q10/lib/modules/${vmlinuz##*/vmlinuz-}/kernel/drivers

# dmatest.ko for the guest kernel: Debian does not ship it (CONFIG_DMATEST
# is off), so it is built here from the dmatest.c of the kernel source that
# `barmap selftests-build` unpacks, against Debian's headers for the guest
# kernel, with the three allocation helpers 6.1 lacks defined. Skipped
# (and said so) when that source is not in the cache.
build_dmatest() {
	dir=$cache/dmatest
	src=$(ls "$cache"/selftests/linux-source-*/drivers/dma/dmatest.c 2>/dev/null | head -n1)
	[ -n "$src" ] || return 1
	release=${vmlinuz##*/vmlinuz-}
	root=$cache/apt/bookworm-qemu
	mkdir -p "$dir/root"
	if [ ! -d "$dir/root/usr/src/linux-headers-$release" ]; then
		opts="-oDir::Etc::SourceList=$root/sources.list -oDir::Etc::SourceParts=/nonexistent \
-oDir::State::Lists=$root/lists -oDir::Cache=$root/cache -oAPT::Sandbox::User=root -oDebug::NoLocking=1"
		common=${release%-amd64}-common
		kbuild=linux-kbuild-$(echo "$release" | cut -d. -f1-2)
		# shellcheck disable=SC2086
		(cd "$dir" && apt-get $opts -q download "linux-headers-$release" \
			"linux-headers-$common" "$kbuild")
		for deb in "$dir"/*.deb; do dpkg-deb -x "$deb" "$dir/root"; done
		sed -i "s#/usr/src/#$dir/root/usr/src/#" "$dir/root/usr/src/linux-headers-$release/Makefile"
	fi
	sed '/#include <linux\/wait.h>/a\
#define kzalloc_objs(T, n) kcalloc((n), sizeof(T), GFP_KERNEL)\
#define kzalloc_obj(T) kzalloc(sizeof(T), GFP_KERNEL)\
#define kmalloc_obj(T) kmalloc(sizeof(T), GFP_KERNEL)' "$src" >"$dir/dmatest.c"
	echo 'obj-m := dmatest.o' >"$dir/Kbuild"
	make -s -C "$dir/root/usr/src/linux-headers-$release" M="$dir" modules >/dev/null
}
dmatest=
if [ -f "$cache/dmatest/dmatest.ko" ] || build_dmatest; then
	dmatest=$cache/dmatest/dmatest.ko
else
	echo "no kernel source with dmatest.c in $cache/selftests (barmap selftests-build): no dmatest in the guest"
fi

cc -static -O1 -Wall -Wextra -Werror -o "$work/init" "$here/qemu_guest_vfio_user.c"
# shellcheck disable=SC2086
python3 - "$work/init" "$work/initrd.cpio" "$modules/dca/dca.ko" \
	"$modules/dma/ioat/ioatdma.ko" $dmatest <<'PYTHON'
import os, sys
out, ino = b"", 1
def entry(name, mode, data=b"", rdev=(0, 0)):
    global out, ino
    n = name.encode() + b"\0"
    fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(n), 0]
    h = b"070701" + b"".join(b"%08X" % v for v in fields) + n
    out += h + b"\0" * (-len(h) % 4) + data + b"\0" * (-len(data) % 4)
    ino += 1
entry("dev", 0o40755)
entry("sys", 0o40755)
entry("dev/console", 0o20600, rdev=(5, 1))
entry("init", 0o100755, open(sys.argv[1], "rb").read())
for module in sys.argv[3:]:
    entry(os.path.basename(module), 0o100644, open(module, "rb").read())
entry("TRAILER!!!", 0)
open(sys.argv[2], "wb").write(out + b"\0" * (-len(out) % 512))
PYTHON

sock=$work/dev.sock
log=$work/guest.log
"$barmap" serve --socket "$sock" --device ioat --device default,memory=1M >"$work/serve.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do [ -S "$sock.ctl" ] && break; sleep 0.1; done

# Emptied here, not by QEMU's redirection below: that happens in the
# background job, after the loop below may have read the last run's log.
: >"$log"
start=$(date +%s)
# QEMU 11.1 runs through trixie's own ld.so (it needs trixie's glibc).
# Guest RAM is a shared memfd, so its DMA_MAPs carry the fd and the server
# reaches guest memory directly (without one, by DMA_READ/WRITE messages).
timeout 300 "$q11/usr/lib64/ld-linux-x86-64.so.2" \
	--library-path "$q11/usr/lib/x86_64-linux-gnu:$q11/lib/x86_64-linux-gnu" \
	"$q11/usr/bin/qemu-system-x86_64" \
	-L "$q11/usr/share/qemu" -L "$q11/usr/share/seabios" \
	-display none -nic none -no-reboot -accel tcg -m 512 \
	-object memory-backend-memfd,id=mem,size=512M,share=on -machine q35,memory-backend=mem \
	-kernel "$vmlinuz" -initrd "$work/initrd.cpio" \
	-append "console=ttyS0 panic=-1 quiet" -serial stdio -monitor none \
	-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$sock\"}}" \
	-device "{\"driver\":\"vfio-user-pci\",\"socket\":{\"type\":\"unix\",\"path\":\"$sock.1\"}}" \
	>"$log" 2>&1 &
qemu=$!

# When the guest touches BAR2 in its loop, clear COMMAND.MEM from outside.
cleared=
while kill -0 "$qemu" 2>/dev/null; do
	if [ -z "$cleared" ] && grep -q "^barmap-guest: BAR2 touching" "$log"; then
		sleep 1
		"$barmap" ctl --socket "$sock" list
		"$barmap" ctl --socket "$sock" --device 1 command-mem off
		cleared=$(date +%s)
		"$barmap" ctl --socket "$sock" list | grep "^device 1"
	fi
	sleep 0.2
done
status=0
wait "$qemu" || status=$?
secs=$(($(date +%s) - start))
"$barmap" ctl --socket "$sock" --device 1 stats | sed -n 1p
"$barmap" ctl --socket "$sock" --device 0 stats | sed -n 2p

grep "^barmap-guest:" "$log" | grep -v "touch [0-9]* ok" || true
tail -n 3 "$log" | grep -v "^barmap-guest:" || true
fail=0
grep -q "^barmap-guest: ioatdma PASS" "$log" || { echo "FAIL: ioatdma did not bind"; fail=1; }
if [ -n "$dmatest" ]; then
	grep -q "summary .* 0 failures" "$log" || { echo "FAIL: no dmatest summary without failures"; fail=1; }
fi
grep -q "^barmap-guest: BAR2 PASS" "$log" || { echo "FAIL: BAR2"; fail=1; }
if [ -z "$cleared" ]; then
	echo "FAIL: the guest never reached its BAR2 loop"
	fail=1
elif [ "$status" -ne $((128 + 7)) ]; then
	echo "FAIL: QEMU exited with status $status, not by SIGBUS"
	fail=1
else
	echo "QEMU died of SIGBUS $(( $(date +%s) - cleared )) s after the clear: its BAR2 mapping was revoked"
fi
echo "qemu_vfio_user: $([ $fail = 0 ] && echo PASS || echo FAIL) in ${secs} s"
exit $fail
