#!/usr/bin/env bash
# Installs what bench/store_bench.py needs beyond the repo's venv (which already
# has pydicom and pynetdicom): Debian's dcmtk (storescu, echoscu, storescp) and
# orthanc. Installs nothing with pip.
set -euo pipefail

need=()
for pkg in dcmtk orthanc; do
  dpkg-query -W -f='${Status}\n' "$pkg" 2>/dev/null | grep -q '^install ok installed$' || need+=("$pkg")
done
if [ ${#need[@]} -eq 0 ]; then
  echo "bench: dcmtk and orthanc are installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "bench: missing Debian packages: ${need[*]}" >&2
  echo "bench: install them with: sudo apt-get install -y ${need[*]}" >&2
  exit 2
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq "${need[@]}" >/dev/null
# NOTE: on a systemd host the package starts its own Orthanc (ports 4242/8042).
# The bench runs its own instances on free ports, so stop the one we just installed.
if [[ " ${need[*]} " == *" orthanc "* ]] && [ -d /run/systemd/system ]; then
  systemctl disable --now orthanc
fi
echo "bench: installed ${need[*]}"
