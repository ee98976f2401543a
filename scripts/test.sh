#!/usr/bin/env bash
# All tests: unit tests on the pure core and the CNI handlers (with in-memory fakes), and
# privileged tests that build throwaway namespaces and prove behaviour with real packets.
# The privileged ones need root; without it they are reported as skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build --build-tests          # also builds weft-cni and weft, which the kernel tests run
swift test --skip-build "$@"
