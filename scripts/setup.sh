#!/usr/bin/env bash
# Installs what weft needs at build and run time from Debian, by package name. Idempotent:
# packages already present are skipped, so a second run costs nothing.
set -euo pipefail
packages=(
  iproute2                    # ip netns, used by the lab and the tests to make namespaces
  nftables                    # masquerade rules; brings libnftables1, which WeftOS loads
  iputils-ping                # the demo's and tests' pings
  containernetworking-plugins # the reference plugins (bridge, host-local, portmap, ...)
  iptables                    # used by the reference plugins (ipMasq, portmap, firewall)
  etcd-server                 # etcd 3.4: the EtcdDatastore backend and its tests (throwaway etcds)
  curl                        # the tests' HTTP client (health-check node ports)
  bind9-dnsutils              # dig: the tests ask the cluster DNS as a pod would
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
