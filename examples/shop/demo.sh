#!/usr/bin/env bash
# Deploy the shop on the devcluster and show it answering from inside the cluster.
set -euo pipefail
cd "$(dirname "$0")"
eval "$(devcluster env)"

kubectl apply -k .
kubectl -n shop rollout status deployment/backend --timeout=120s
kubectl -n shop rollout status deployment/frontend --timeout=120s

echo
echo "# A client pod asks the frontend (by its short Service name); the frontend asks the backend:"
kubectl -n shop delete pod shop-client --ignore-not-found --wait=true >/dev/null
kubectl -n shop run shop-client --rm -i --restart=Never --quiet \
    --image=docker.io/tether-devcluster/busybox:1 --image-pull-policy=Never \
    -- wget -qO- http://frontend/
