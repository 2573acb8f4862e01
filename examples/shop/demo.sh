#!/usr/bin/env bash
# Deploy the shop on the devcluster and show it answering from inside the cluster.
set -euo pipefail
cd "$(dirname "$0")"
# KUBECONFIG, the cluster's kubectl and TETHER_AGENT_IMAGE (the locally built agent image).
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

echo
echo "# Now the frontend runs on this machine under tether exec, in the frontend pod's context:"
echo "#   PORT=18081 tether exec --target deployment/frontend -n shop \\"
echo "#       --http-header-filter '^x-dev: demo\$' --port-map 8080:18081 -- python3 app/shop.py frontend"
PORT=18081 tether exec -q --target deployment/frontend -n shop \
    --http-header-filter '^x-dev: demo$' --port-map 8080:18081 \
    -- python3 app/shop.py frontend >/tmp/tether-demo.log 2>&1 &
demo_pid=$!
trap 'status=$?; kill -TERM $demo_pid 2>/dev/null; wait $demo_pid 2>/dev/null || true; exit $status' EXIT
for _ in $(seq 1 100); do
    curl -sf localhost:18081/healthz >/dev/null 2>&1 && break
    sleep 0.2
done
echo "# It reads the pod's env (SHOP_MODE) and /etc/shop/config.yaml, and reaches http://backend"
echo "# by its short name through the pod's network:"
curl -s localhost:18081/

echo
echo "# And it takes the pod's requests that carry X-Dev: demo (the others still reach the pod)."
echo "# A client pod asks http://frontend/from-a-pod with that header:"
kubectl -n shop delete pod shop-client --ignore-not-found --wait=true >/dev/null
kubectl -n shop run shop-client --rm -i --restart=Never --quiet \
    --image=docker.io/tether-devcluster/busybox:1 --image-pull-policy=Never \
    -- wget -qO- --header 'X-Dev: demo' http://frontend/from-a-pod
echo "# ...and the local frontend's log shows it served that request:"
grep from-a-pod /tmp/tether-demo.log
