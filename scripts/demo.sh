#!/usr/bin/env bash
# The main job: one emulated node (a network namespace) with pods wired by the real weft CNI
# plugin binary; prints addresses and a ping matrix, then removes everything. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --static-swift-stdlib --product weft-cni >/dev/null
swift build -c release --static-swift-stdlib --product weft >/dev/null
exec .build/release/weft demo "$@"
