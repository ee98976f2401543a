#!/usr/bin/env bash
# The main job: a 3-node cluster on this machine (each node a network namespace on an emulated
# host network, the embedded SQLite datastore, an agent and a runtime per node), pods on every
# node from examples/pods.yaml, a service found by name and reached, the routes each node's
# agent programmed, a NetworkPolicy (examples/policy.yaml) with the pod-to-pod connectivity matrix
# probed with real packets and judged against it, `weft trace` of an allowed and a denied path,
# the dropped flows, `weft doctor`, then everything removed. Needs root. Extra arguments go to
# `weft lab up` (e.g. --mode native, --mode underlay, --datastore etcd, --nodes 5).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
swift build -c release --static-swift-stdlib --product weft-cni >/dev/null
swift build -c release --static-swift-stdlib --product weft >/dev/null
weft=.build/release/weft
$weft lab down --name demo >/dev/null 2>&1 || true
trap '$weft lab down --name demo' EXIT
$weft lab up --name demo --nodes 3 "$@"
$weft apply --lab demo -f examples/pods.yaml
echo; $weft get pods -A -o wide --lab demo
echo; $weft get nodes --lab demo
echo; $weft get services -A --lab demo
# A pod finds the web service by name through the cluster DNS (its node's resolver, 10.96.0.10)
# and reaches it through the ClusterIP.
echo; echo "from shop/cart-0: getent hosts web.default; weft probe web.default:80"
ip netns exec wl-demo-shop-cart-0 getent hosts web.default
vip=$(ip netns exec wl-demo-shop-cart-0 getent hosts web.default | cut -d' ' -f1)
ip netns exec wl-demo-shop-cart-0 $weft probe "$vip:80"
echo; $weft lab routes --lab demo
# A NetworkPolicy: only the shop namespace may reach the web pods. The matrix is probed with
# real packets and judged against what the policy allows; trace explains one allowed and one
# denied path hop by hop; observe shows the dropped flows; doctor checks every node.
echo; $weft apply --lab demo -f examples/policy.yaml
sleep 1
echo; $weft connectivity --lab demo
echo; $weft trace --lab demo shop/cart-0 svc/default/web:80
echo; $weft trace --lab demo web-0 web-1:8080 || true
echo; $weft observe --lab demo --verdict dropped | tail -5
echo; $weft doctor --lab demo
