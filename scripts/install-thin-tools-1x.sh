#!/usr/bin/env bash
# Installs the Rust 1.x thin-provisioning-tools (thin_check, thin_dump, thin_restore, thin_ls,
# thin_delta, thin_repair, thin_metadata_size, ...) into DEST (default /opt/thin-tools-1x)
# beside Debian 12's 0.9 tools, without touching the system's packages: the .deb comes from
# Debian 13 (trixie) on the mirror this machine's apt sources already use. 1.x checks more than
# 0.9 (data reference counts, mapped_blocks), so the tests run both.
# Usage: scripts/install-thin-tools-1x.sh [DEST]   (root, for apt-get's download)
set -euo pipefail
dest=${1:-${THINPOOL_TOOLS_1X:-/opt/thin-tools-1x}}
if [ -x "$dest/pdata_tools" ]; then exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mirror=""
if [ -r /etc/apt/sources.list.d/debian.sources ]; then
  mirror=$(awk '/^URIs:/ && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources)
fi
if [ -z "$mirror" ] && [ -r /etc/apt/sources.list ]; then
  mirror=$(awk '$1 == "deb" && $2 ~ /debian\/?$/ {print $2; exit}' /etc/apt/sources.list)
fi
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
mkdir -p "$work/lists/partial" "$work/cache/archives/partial"
echo "deb $mirror trixie main" > "$work/sources.list"
apt_opts=(-o Dir::Etc::sourcelist="$work/sources.list" -o Dir::Etc::sourceparts=-
          -o Dir::State::Lists="$work/lists" -o Dir::Cache="$work/cache" -o APT::Sandbox::User=root)
apt-get "${apt_opts[@]}" update -qq > /dev/null
(cd "$work" && apt-get "${apt_opts[@]}" download -qq thin-provisioning-tools > /dev/null)
dpkg-deb -x "$work"/thin-provisioning-tools_*.deb "$work/pkg"
mkdir -p "$dest"
install -m 0755 "$work/pkg/usr/sbin/pdata_tools" "$dest/pdata_tools"
for tool in thin_check thin_dump thin_restore thin_ls thin_delta thin_repair thin_metadata_size \
            thin_trim thin_rmap thin_metadata_pack thin_metadata_unpack; do
  ln -sf pdata_tools "$dest/$tool"
done
echo "installed thin-provisioning-tools $("$dest/thin_check" --version) in $dest"
