#!/usr/bin/env bash
# The callgate demo, end to end, on this machine (run as root):
#   1. install what is needed (scripts/setup.sh),
#   2. build a two-node lab of network namespaces from examples/shop/inventory.yaml,
#      with every pod serving its declared ports,
#   3. compile examples/shop/apps.yaml (native callgate/v1 Apps) for each node and
#      apply it there as one atomic nftables transaction,
#   4. send real TCP and UDP probes between all pods and print what got through
#      beside what the policy says (exit 1 if they differ),
#   5. explain one allowed and one denied connection,
#   6. check the shop's connectivity expectations against each node's live table,
#   7. tear the lab down (also on failure or Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh

CG=.venv/bin/callgate
LAB=${CALLGATE_DEMO_LAB:-cgdemo}
INV=examples/shop/inventory.yaml
POL=examples/shop

cleanup() { "$CG" lab down --name "$LAB" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "Lab: two nodes, five pods, from $INV"
"$CG" lab up --inventory "$INV" --name "$LAB"

step "Before any policy: everyone reaches everyone (IPv4 shown)"
NOPOL=$(mktemp -d)
"$CG" lab probe --inventory "$INV" --policies "$NOPOL" --name "$LAB" --family 4
rmdir "$NOPOL"

for node in node-1 node-2; do
  step "Apply on $node (one nftables transaction inside the node's namespace)"
  "$CG" apply --inventory "$INV" --policies "$POL" --node "$node" --netns "$("$CG" lab netns "$node" --name "$LAB")"
done

step "What callgate put on node-1"
# The first 60 non-blank lines. sed reads to the end, unlike head: under pipefail a writer
# cut off by head's early exit (SIGPIPE, 141) would end the demo, depending on timing.
ip netns exec "$("$CG" lab netns node-1 --name "$LAB")" nft list table inet callgate | grep -v '^\s*$' | sed -n '1,60p'

step "Probe with real packets: observed vs expected (IPv4 and IPv6)"
"$CG" lab probe --inventory "$INV" --policies "$POL" --name "$LAB"

step "Why storefront reaches cart, and why batch is cut off"
"$CG" explain --inventory "$INV" --policies "$POL" edge/storefront shop/cart-2 8080/TCP
"$CG" explain --inventory "$INV" --policies "$POL" shop/batch shop/ledger 9090/TCP

step "The shop's connectivity expectations, against each node's live table"
for node in node-1 node-2; do
  "$CG" test --inventory "$INV" --policies "$POL" --live --node "$node" \
    --netns "$("$CG" lab netns "$node" --name "$LAB")" examples/shop/connectivity.cgtest
done

step "Re-applying the same input changes nothing"
"$CG" apply --inventory "$INV" --policies "$POL" --node node-1 --netns "$("$CG" lab netns node-1 --name "$LAB")"

step "Done: isolated apps are separated, declared callers connect. Tearing the lab down."
