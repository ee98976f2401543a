#!/usr/bin/env bash
# Builds weft-cni (release, static Swift runtime) and installs it as the CNI plugin "weft"
# (config "type": "weft") into the runtime's plugin directory, /opt/cni/bin by default.
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${1:-/opt/cni/bin}"
bash scripts/setup.sh
swift build -c release --static-swift-stdlib --product weft-cni
install -D -m 0755 .build/release/weft-cni "$dest/weft"
echo "installed $dest/weft"
