#!/usr/bin/env bash
# Boots the host's Debian kernel under qemu (software emulation) with a small busybox initramfs
# and runs a shell script as root inside it, with a pool's metadata file as /dev/vda and its data
# file as /dev/vdb (raw, read-write, no cache), so the real dm-thin-pool target can activate a
# pool thinpool wrote, and leave metadata thinpool must open.
#
# Usage: scripts/kernel-dm-thin.sh METADATA DATA GUEST_SCRIPT
#   The guest script runs under busybox sh with dmsetup on PATH; its output comes back on
#   stdout and its exit status is ours (3 when the VM did not finish it).
# Environment: EXTRA_MODULES="ext4" adds kernel modules (and their dependencies);
#   THINPOOL_VM_KVM=1 uses KVM where it works; THINPOOL_VM_TIMEOUT (seconds, default 240).
# Needs (Debian 12): qemu-system-x86 linux-image-amd64 busybox-static dmsetup cpio (+ zstd/xz
# when modules are compressed). scripts/install-test-tools.sh installs them.
set -euo pipefail
meta=$1 data=$2 script=$3
kver=$(ls /lib/modules 2>/dev/null | sort -V | tail -1)
kernel=/boot/vmlinuz-$kver
if [ -z "$kver" ] || [ ! -r "$kernel" ]; then echo "kernel-dm-thin: no kernel image (apt-get install linux-image-amd64)" >&2; exit 2; fi
mdir=/lib/modules/$kver
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,mnt,lib/modules}
cp "$(command -v busybox || echo /bin/busybox)" "$root/bin/busybox"
for tool in sh mount umount mkdir cat echo dd sync poweroff insmod sleep ls head tail od hexdump cmp \
            md5sum sha256sum seq expr wc printf grep sed awk blockdev yes tr cut sort rm cp touch stat dmesg; do
  ln -sf busybox "$root/bin/$tool"
done
dm=$(command -v dmsetup || echo /sbin/dmsetup)
cp "$dm" "$root/sbin/dmsetup"
# dmsetup's shared libraries, at the same paths
ldd "$dm" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' | while read -r lib; do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
# modules with their dependencies, in load order
declare -A seen=()
order=()
add_module() {
  local m=$1 dep
  [ -n "${seen[$m]:-}" ] && return 0
  seen[$m]=1
  for dep in $(awk -v key="$m:" '$1 == key { for (i = 2; i <= NF; i++) print $i }' "$mdir/modules.dep"); do add_module "$dep"; done
  order+=("$m")
}
want="virtio_pci|virtio_blk|crc32c_generic|crc32c-intel|dm-thin-pool${EXTRA_MODULES:+|$EXTRA_MODULES}"
for m in $(grep -oE "^kernel/[^:]*/($want)\.ko(\.xz|\.zst)?:" "$mdir/modules.dep" | tr -d :); do add_module "$m"; done
: > "$root/modlist"
for m in "${order[@]}"; do
  f=$(basename "$m")
  case "$f" in
    *.ko.xz) xz -dc "$mdir/$m" > "$root/lib/modules/${f%.xz}"; f=${f%.xz} ;;
    *.ko.zst) zstd -qdc "$mdir/$m" > "$root/lib/modules/${f%.zst}"; f=${f%.zst} ;;
    *) cp "$mdir/$m" "$root/lib/modules/$f" ;;
  esac
  echo "$f" >> "$root/modlist"
done
cp "$script" "$root/guest.sh"
cat > "$root/init" <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /modlist); do insmod /lib/modules/$m 2>/dev/null; done
mkdir -p /dev/mapper
sleep 0.3
export PATH=/bin:/sbin
echo "@@GUEST-BEGIN@@"
sh /guest.sh
echo "@@GUEST-END rc=$?@@"
sync
poweroff -f
INIT
chmod +x "$root/init" "$root/guest.sh"
(cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) > "$work/initrd.gz"
accel=(-machine accel=tcg -cpu max)
[ -n "${THINPOOL_VM_KVM:-}" ] && accel=(-enable-kvm -cpu host)
timeout "${THINPOOL_VM_TIMEOUT:-240}" qemu-system-x86_64 "${accel[@]}" -m 512 -smp 1 -nographic -no-reboot \
  -kernel "$kernel" -initrd "$work/initrd.gz" -append "console=ttyS0 quiet panic=-1" \
  -drive "file=$meta,format=raw,if=virtio,cache=none" -drive "file=$data,format=raw,if=virtio,cache=none" \
  > "$work/console" 2>&1 || true
sed -n '/@@GUEST-BEGIN@@/,/@@GUEST-END/p' "$work/console" | sed '1d;$d' | tr -d '\r'
rc=$(sed -n 's/.*@@GUEST-END rc=\([0-9]*\)@@.*/\1/p' "$work/console" | tail -1)
if [ -z "$rc" ]; then
  echo "kernel-dm-thin: the VM did not finish the guest script; console tail:" >&2
  tail -20 "$work/console" | tr -d '\r' >&2
  exit 3
fi
exit "$rc"
