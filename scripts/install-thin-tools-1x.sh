#!/usr/bin/env bash
# Installs the Rust 1.x thin-provisioning-tools (thin_check, thin_dump, thin_restore, thin_ls,
# thin_delta, thin_repair, thin_metadata_size, ...) into DEST (default /opt/thin-tools-1x)
# beside Debian 12's 0.9 tools, without touching the system's packages: the .deb comes from
# Debian 13 (trixie) on the mirror this machine's apt sources already use (it fails, saying so,
# when they name none). 1.x checks more than 0.9 (data reference counts, mapped_blocks), so the
# tests run both.
# Usage: scripts/install-thin-tools-1x.sh [DEST]   (root, for apt-get's download)
#        scripts/install-thin-tools-1x.sh --print-mirror   (the mirror it would use, and stop)
# APT_SOURCES_DIR replaces /etc/apt when looking for the mirror (for testing this script).
set -euo pipefail
print_mirror=0
if [ "${1:-}" = "--print-mirror" ]; then print_mirror=1; shift; fi
dest=${1:-${THINPOOL_TOOLS_1X:-/opt/thin-tools-1x}}
if [ $print_mirror = 0 ] && [ -x "$dest/pdata_tools" ]; then exit 0; fi
# The Debian mirror this machine's apt already uses: the first `deb` URI ending in /debian, from
# the deb822 files (sources.list.d/*.sources; stanzas with Enabled: no skipped) or the one-line
# lists (sources.list, sources.list.d/*.list; [options] skipped). No fallback host: a machine
# that has no Debian mirror configured says so.
apt_dir=${APT_SOURCES_DIR:-/etc/apt}
mirror_of_sources() {
  awk '
    function flush() { if (deb && enabled && uris != "") print uris; deb = 0; enabled = 1; uris = "" }
    BEGIN { enabled = 1 }
    /^[ \t]*#/ { next }
    /^[ \t]*$/ { flush(); next }
    tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
    tolower($1) == "enabled:" { enabled = (tolower($2) != "no") }
    tolower($1) == "uris:" { for (i = 2; i <= NF; i++) uris = uris " " $i }
    END { flush() }
  ' "$@" | tr ' ' '\n'
}
mirror_of_lists() {
  awk '$1 == "deb" { i = 2; if ($2 ~ /^\[/) { while (i <= NF && $i !~ /\]$/) i++; i++ } print $i }' "$@"
}
mirror=$( {
  shopt -s nullglob
  sources=("$apt_dir"/sources.list.d/*.sources)
  lists=("$apt_dir"/sources.list "$apt_dir"/sources.list.d/*.list)
  readable=()
  for f in "${lists[@]}"; do [ -r "$f" ] && readable+=("$f"); done
  [ ${#sources[@]} -gt 0 ] && mirror_of_sources "${sources[@]}"
  [ ${#readable[@]} -gt 0 ] && mirror_of_lists "${readable[@]}"
  true
} | grep -E '^[a-z+]+://.*/debian/?$' | head -n 1 || true)
if [ -z "$mirror" ]; then
  echo "install-thin-tools-1x: cannot find a Debian mirror in $apt_dir/sources.list or $apt_dir/sources.list.d/*.{sources,list}: configure one for apt (a deb line or URIs: ending in /debian), then run this again" >&2
  exit 1
fi
if [ $print_mirror = 1 ]; then echo "$mirror"; exit 0; fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
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
