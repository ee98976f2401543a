#!/usr/bin/env bash
# All tests: unit tests on the pure core, the CNI handlers and the datastores, then privileged
# tests that build throwaway namespaces and prove behaviour with real packets. The privileged
# ones need root; without it they are reported as skipped.
#
# Two runs, not one: the kernel tests start labs (agents, runtimes, a datastore) that would
# otherwise compete for the CPU with the datastores' lease tests. Each run has a time limit so
# a hang fails loudly instead of running on; extra arguments go to both runs.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build --build-tests          # also builds weft-cni and weft, which the kernel tests run
status=0
timeout -k 30 25m swift test --skip-build --skip WeftKernelTests "$@" || status=$?
timeout -k 30 40m swift test --skip-build --filter WeftKernelTests "$@" || status=$?
exit $status
