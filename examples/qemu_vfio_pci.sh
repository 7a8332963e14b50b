#!/bin/sh
# SPDX-License-Identifier: MIT
#
# QEMU's own vfio-pci on a barmap device: Debian's QEMU 10.0
# (bookworm-backports), run under `barmap run`, passes the default device
# to a guest, once through iommufd (-object iommufd) and once through the
# legacy container and group. The guest (Debian's 6.1 cloud kernel and a
# one-file initramfs, examples/qemu_guest_bar2.c as /init) finds the
# device, maps its BAR2 through sysfs, writes a pattern, reads it back and
# powers off. Passes when both guests print "barmap-guest: BAR2 PASS".
# With `ioat`, two more guests (Debian's generic 6.1 kernel, its dca and
# ioatdma modules in the initramfs) get `--device ioat`: the guest's own
# ioatdma binds the device, which it does only after its DMA self-test (a
# memcpy through the channel, checked) passes: "barmap-guest: ioatdma PASS".
# With `igb`, two guests get `--device igb` and load dca, i2c-algo-bit and
# igb: the guest's igb driver binds the port and its interface gets a
# carrier: "barmap-guest: igb PASS".
#
# Usage (as root, from the repository, after
# `cargo build --release -p barmap-cli -p barmap-preload`):
#   sh examples/qemu_vfio_pci.sh [iommufd|legacy|both] [ioat] [igb]
# Environment: BARMAP (the barmap binary, default target/release/barmap),
# BARMAP_CACHE (default ~/.cache/barmap/guest), BARMAP_DEBIAN_MIRROR
# (default http://deb.debian.org/debian), BARMAP_QEMU: 10.0 (default) or
# 11.1 (trixie-backports: it needs trixie's glibc, so its whole library
# closure is unpacked and it runs through trixie's own ld.so).
#
# QEMU and the kernels are fetched with apt-get into a private apt root in
# the cache and unpacked there with dpkg-deb; nothing is installed on the
# host. The host needs apt, dpkg-deb, cc with a static libc, python3.
set -eu

paths=${1:-both}
[ $# -gt 0 ] && shift
# The models whose guest driver runs too (ioat, igb), after the default.
ioat="$*"
here=$(cd "$(dirname "$0")" && pwd)
barmap=${BARMAP:-$here/../target/release/barmap}
cache=${BARMAP_CACHE:-$HOME/.cache/barmap/guest}
mirror=${BARMAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$cache/apt/bookworm-qemu
qemu=$cache/qemu-10.0
work=$cache/qemu-vfio-pci
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

[ -x "$barmap" ] || { echo "no barmap at $barmap: cargo build --release -p barmap-cli -p barmap-preload" >&2; exit 2; }
mkdir -p "$root/lists/partial" "$root/cache/archives/partial" "$root/debs" "$qemu" "$work"
cat > "$root/sources.list" <<EOF
deb [signed-by=$keyring] $mirror bookworm main
deb [signed-by=$keyring] $mirror bookworm-backports main
EOF
apt_opts="-oDir::Etc::SourceList=$root/sources.list -oDir::Etc::SourceParts=/nonexistent \
-oDir::State::Lists=$root/lists -oDir::Cache=$root/cache -oAPT::Sandbox::User=root -oDebug::NoLocking=1"

# The package a metapackage depends on (the current kernel of a flavour).
depends() {
	# shellcheck disable=SC2086
	apt-cache $apt_opts depends "$1" | sed -n 's/^ *Depends: \(linux-image-[0-9].*\)$/\1/p' | head -n1
}

if [ ! -f "$qemu/.unpacked" ]; then
	# shellcheck disable=SC2086
	apt-get $apt_opts -q update
	kernel=$(depends linux-image-cloud-amd64)
	# QEMU 10.0 from bookworm-backports, the libraries it needs that a
	# Debian 12 host may lack, the firmware, and the guest kernel.
	# shellcheck disable=SC2086
	(cd "$root/debs" && apt-get $apt_opts -q download \
		qemu-system-x86/bookworm-backports qemu-system-common/bookworm-backports \
		qemu-system-data/bookworm-backports seabios \
		libcapstone4 libpmem1 libfdt1 librdmacm1 libibverbs1 libslirp0 libvdeplug2 \
		libndctl6 libdaxctl1 libnl-3-200 libnl-route-3-200 "$kernel")
	for deb in "$root"/debs/*.deb; do dpkg-deb -x "$deb" "$qemu"; done
	touch "$qemu/.unpacked"
fi
if [ -n "$ioat" ] && [ ! -f "$qemu/.generic" ]; then
	# The generic kernel: the cloud one has no ioatdma.
	generic=$(depends linux-image-amd64)
	# shellcheck disable=SC2086
	(cd "$root/debs" && apt-get $apt_opts -q download "$generic")
	dpkg-deb -x "$root/debs/${generic}"_*.deb "$qemu"
	touch "$qemu/.generic"
fi
export LD_LIBRARY_PATH="$qemu/usr/lib/x86_64-linux-gnu:$qemu/lib/x86_64-linux-gnu"
bin=$qemu/usr/bin/qemu-system-x86_64
firmware=$qemu
if ldd "$bin" | grep 'not found'; then
	echo "QEMU needs the libraries above: add their packages to this script" >&2
	exit 2
fi
vmlinuz=$(ls "$qemu"/boot/vmlinuz-*-cloud-amd64 | head -n1)

if [ "${BARMAP_QEMU:-10.0}" = 11.1 ]; then
	troot=$cache/apt/trixie-qemu
	q11=$cache/qemu-11.1
	mkdir -p "$troot/lists/partial" "$troot/cache/archives/partial" "$troot/debs" "$q11"
	cat > "$troot/sources.list" <<EOF
deb [signed-by=$keyring] $mirror trixie main
deb [signed-by=$keyring] $mirror trixie-backports main
EOF
	topts="-oDir::Etc::SourceList=$troot/sources.list -oDir::Etc::SourceParts=/nonexistent \
-oDir::State::Lists=$troot/lists -oDir::Cache=$troot/cache -oAPT::Sandbox::User=root \
-oDebug::NoLocking=1 -oDir::State::status=/dev/null"
	if [ ! -f "$q11/.unpacked" ]; then
		# shellcheck disable=SC2086
		apt-get $topts -q update
		# shellcheck disable=SC2086
		v=$(apt-cache $topts madison qemu-system-x86 | awk -F'|' '/backports/ {gsub(/ /, "", $2); print $2; exit}')
		# QEMU 11.1 and everything it needs, libc included.
		# shellcheck disable=SC2086
		apt-cache $topts depends --recurse --no-recommends --no-suggests --no-conflicts \
			--no-breaks --no-replaces --no-enhances --no-pre-depends \
			"qemu-system-x86=$v" "qemu-system-common=$v" "qemu-system-data=$v" |
			grep -v '^ \|^<\|^qemu-system' | sort -u >"$troot/packages"
		# shellcheck disable=SC2086
		(cd "$troot/debs" && xargs apt-get $topts -q download <"$troot/packages" &&
			apt-get $topts -q download "qemu-system-x86=$v" "qemu-system-common=$v" \
				"qemu-system-data=$v")
		for deb in "$troot"/debs/*.deb; do dpkg-deb -x "$deb" "$q11"; done
		touch "$q11/.unpacked"
	fi
	cat >"$work/qemu-11.1" <<EOF
#!/bin/sh
exec "$q11/usr/lib64/ld-linux-x86-64.so.2" \
	--library-path "$q11/usr/lib/x86_64-linux-gnu:$q11/lib/x86_64-linux-gnu" \
	"$q11/usr/bin/qemu-system-x86_64" "\$@"
EOF
	chmod +x "$work/qemu-11.1"
	unset LD_LIBRARY_PATH
	bin=$work/qemu-11.1
	firmware=$q11
fi

# An initramfs: /init, the directories and console it needs, and modules.
cc -static -O1 -Wall -Wextra -Werror -o "$work/init" "$here/qemu_guest_bar2.c"
mkinitrd() {
	python3 - "$work/init" "$@" <<'PYTHON'
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
}
mkinitrd "$work/initrd.cpio"
generic_vmlinuz=
if [ -n "$ioat" ]; then
	generic_vmlinuz=$(ls "$qemu"/boot/vmlinuz-*-amd64 | grep -v cloud | head -n1)
	modules=$qemu/lib/modules/${generic_vmlinuz##*/vmlinuz-}/kernel/drivers
	mkinitrd "$work/initrd-ioat.cpio" "$modules/dca/dca.ko" "$modules/dma/ioat/ioatdma.ko"
	mkinitrd "$work/initrd-igb.cpio" "$modules/dca/dca.ko" \
		"$modules/i2c/algos/i2c-algo-bit.ko" "$modules/net/ethernet/intel/igb/igb.ko"
fi

# boot NAME DEVICE KERNEL INITRD EXPECT VFIO_PCI_EXTRA [QEMU ARGS]: one
# guest under `barmap run --device DEVICE`; its console in NAME.log.
boot() {
	name=$1 device=$2 kernel=$3 initrd=$4 expect=$5 extra=$6
	shift 6
	log=$work/$name.log
	start=$(date +%s)
	# shellcheck disable=SC2016
	timeout 900 "$barmap" run --device "$device" -- sh -c \
		'extra=$1; shift; exec "$@" -device "vfio-pci,host=$BARMAP_BDF$extra"' qemu "$extra" \
		"$bin" -L "$firmware/usr/share/qemu" -L "$firmware/usr/share/seabios" \
		-display none -nic none -no-reboot -machine q35 -accel tcg -m 512 \
		-kernel "$kernel" -initrd "$initrd" \
		-append "console=ttyS0 panic=-1 quiet" -serial stdio -monitor none "$@" \
		>"$log" 2>&1 || true
	secs=$(($(date +%s) - start))
	if grep -q "^barmap-guest: $expect" "$log"; then
		echo "$name: $(grep "^barmap-guest: $expect" "$log") in ${secs} s"
	else
		echo "$name: FAIL after ${secs} s; the last lines of $log:"
		tail -n 20 "$log"
		return 1
	fi
}

status=0
for path in iommufd legacy; do
	[ "$paths" = both ] || [ "$paths" = "$path" ] || continue
	if [ "$path" = iommufd ]; then
		set -- ",iommufd=iommufd0" -object iommufd,id=iommufd0
	else
		set -- ""
	fi
	boot "$path" default "$vmlinuz" "$work/initrd.cpio" "BAR2 PASS" "$@" || status=1
	for model in $ioat; do
		case $model in
		ioat) expect="ioatdma PASS" ;;
		igb) expect="igb PASS" ;;
		*) echo "unknown model $model (ioat, igb)" >&2; exit 2 ;;
		esac
		boot "$path-$model" "$model" "$generic_vmlinuz" "$work/initrd-$model.cpio" "$expect" "$@" ||
			status=1
	done
done
exit $status
