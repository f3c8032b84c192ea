#!/usr/bin/env bash
# Installs the Debian programs the tests use as oracles, when they are missing. As root it runs
# apt-get; as another user it names the missing packages and the tests that need them skip.
# The list is also the README's list of test dependencies.
set -uo pipefail
# command -> Debian package
tools=(
  thin_check:thin-provisioning-tools
  qemu-img:qemu-utils
  qemu-io:qemu-utils
  qemu-nbd:qemu-utils
  nbdinfo:libnbd-bin
  nbdcopy:libnbd-bin
  nbdfuse:libnbd-bin
  openssl:openssl
  fusermount3:fuse3
  mkfs.ext4:e2fsprogs
  debugfs:e2fsprogs
  fsfreeze:util-linux
  blockdev:util-linux
  findmnt:util-linux
  runuser:util-linux
  pgrep:procps
  losetup:mount
  fio:fio
  qemu-system-x86_64:qemu-system-x86
  dmsetup:dmsetup
  cpio:cpio
  zstd:zstd
  umoci:umoci
  skopeo:skopeo
  setfattr:attr
  getfattr:attr
  fuse2fs:fuse2fs
  mkfs.xfs:xfsprogs
  containerd:containerd
  ctr:containerd
  containerd-shim-runc-v2:containerd
  runc:runc
  go:golang-go
)
# path -> Debian package, for packages without a program of their own
paths=(
  /usr/share/gocode/src/github.com/containerd/containerd/snapshots/testsuite:golang-github-containerd-containerd-dev
)
have() { command -v "$1" > /dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || [ -x "/sbin/$1" ]; }
missing=()
for t in "${tools[@]}"; do
  have "${t%%:*}" || missing+=("${t#*:}")
done
for p in "${paths[@]}"; do
  [ -e "${p%%:*}" ] || missing+=("${p#*:}")
done
# The kernel VM's initramfs needs a statically linked busybox (the dynamic one lacks its libraries there).
dpkg-query -W -f='${Status}' busybox-static 2> /dev/null | grep -q 'install ok installed' || missing+=(busybox-static)
ls /boot/vmlinuz-* > /dev/null 2>&1 && ls /lib/modules/*/kernel/drivers/md/dm-thin-pool.ko* > /dev/null 2>&1 || missing+=(linux-image-amd64)
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u | sed '/^$/d')
dest=${THINPOOL_TOOLS_1X:-/opt/thin-tools-1x}
here=$(cd "$(dirname "$0")" && pwd)
if [ "$(id -u)" != 0 ]; then
  if [ ${#missing[@]} -gt 0 ]; then
    echo "install-test-tools: not root; missing Debian packages: ${missing[*]} (tests that need them are skipped)"
  fi
  [ -x "$dest/pdata_tools" ] || echo "install-test-tools: not root; thin-provisioning-tools 1.x missing in $dest (run scripts/install-thin-tools-1x.sh as root)"
  exit 0
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-test-tools: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq > /dev/null || echo "install-test-tools: apt-get update failed"
  apt-get install -y -qq --no-install-recommends "${missing[@]}" > /tmp/thinpool-apt.log 2>&1 \
    || { echo "install-test-tools: apt-get install failed (see /tmp/thinpool-apt.log)"; tail -5 /tmp/thinpool-apt.log; }
fi
[ -x "$dest/pdata_tools" ] || bash "$here/install-thin-tools-1x.sh" "$dest" \
  || echo "install-test-tools: could not install thin-provisioning-tools 1.x (tests that need it are skipped)"
exit 0
