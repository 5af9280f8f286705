#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1, built from source (e2e/controlplane/go.mod pins the
# release): etcd, kube-apiserver (TLS, client-certificate and ServiceAccount-token authentication,
# RBAC, the default admission plugins, an audit log of writes), kube-controller-manager,
# kube-scheduler, KWOK simulating three nodes in three zones, and a small provisioner behind two
# StorageClasses (`standard`, the default, can grow volumes; `fixed` cannot).
#
#   e2e/controlplane.sh build        builds the binaries (cached) and prints their directory
#   e2e/controlplane.sh up DIR       starts everything with its state in DIR; writes DIR/kubeconfig
#                                    (admin), links DIR/bin to the binaries (kubectl of the same
#                                    release among them) and returns once /readyz answers and the
#                                    nodes are Ready
#   e2e/controlplane.sh down DIR     stops exactly what `up DIR` started (by pid)
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
MODULE="$HERE/controlplane"
COMPONENTS=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok provisioner)
NODES=("node-a:zone-a" "node-b:zone-b" "node-c:zone-c")

die() { echo "controlplane: $*" >&2; exit 1; }

# The binaries live in a cache directory named after the module's contents, so a warm machine
# reuses them and any change to the pins or the sources builds afresh.
bin_dir() {
  local key
  key="$( (cd "$MODULE" && cat go.mod go.sum kwok/go.mod kwok/go.sum $(find cmd -name '*.go' | sort); \
    declare -f build version_ldflags) | sha256sum | cut -c1-16)"
  echo "${POSTWARDEN_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/postwarden/controlplane}/$key"
}

# A build from module sources carries no git metadata, so the binaries would call themselves
# v0.0.0-master and `kubectl version` would fail; stamp the release the module pins instead.
version_ldflags() {
  local v major minor flags="-s" pkg
  v="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ { print $2; exit }' "$MODULE/go.mod")"
  [ -n "$v" ] || die "k8s.io/kubernetes is not pinned in $MODULE/go.mod"
  major="${v#v}"; major="${major%%.*}"
  minor="${v#v*.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean -X $pkg.gitCommit=0000000000000000000000000000000000000000"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

build() {
  local dir
  dir="$(bin_dir)"
  if [ ! -f "$dir/.complete" ]; then
    mkdir -p "$dir"
    local start=$SECONDS
    (cd "$MODULE" && go build -mod=readonly -buildvcs=false -trimpath -ldflags="$(version_ldflags)" -o "$dir/" \
      k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl ./cmd/etcd ./cmd/provisioner) >&2
    (cd "$MODULE/kwok" && go build -mod=readonly -buildvcs=false -trimpath -ldflags=-s -o "$dir/" sigs.k8s.io/kwok/cmd/kwok) >&2
    touch "$dir/.complete"
    echo "controlplane: built in $((SECONDS - start)) s into $dir" >&2
  fi
  echo "$dir"
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# ---- PKI: one CA; serving certificates for etcd and the API server; client certificates --------

pki() {
  local p="$1/pki"
  mkdir -p "$p" && chmod 700 "$p"
  openssl ecparam -name prime256v1 -genkey -noout -out "$p/ca.key" 2>/dev/null
  openssl req -x509 -new -key "$p/ca.key" -subj "/CN=postwarden-e2e-ca" -days 30 -out "$p/ca.crt" 2>/dev/null
  issue "$p" etcd "/CN=etcd" "serverAuth,clientAuth" "IP:127.0.0.1,DNS:localhost"
  issue "$p" apiserver "/CN=kube-apiserver" "serverAuth" \
    "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  issue "$p" apiserver-etcd-client "/CN=kube-apiserver-etcd-client" "clientAuth"
  issue "$p" admin "/O=system:masters/CN=admin" "clientAuth"
  issue "$p" controller-manager "/CN=system:kube-controller-manager" "clientAuth"
  issue "$p" scheduler "/CN=system:kube-scheduler" "clientAuth"
  # The node simulator and the provisioner stand in for node agents and a CSI driver across all
  # nodes; they act as cluster administrators.
  issue "$p" infra "/O=system:masters/CN=postwarden-e2e-infra" "clientAuth"
  openssl ecparam -name prime256v1 -genkey -noout -out "$p/sa.key" 2>/dev/null
  openssl ec -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null
}

issue() {
  local p="$1" name="$2" subject="$3" usage="$4" san="${5:-}"
  local ext="$p/$name.ext"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    [ -z "$san" ] || echo "subjectAltName=$san"
  } >"$ext"
  openssl ecparam -name prime256v1 -genkey -noout -out "$p/$name.key" 2>/dev/null
  openssl req -new -key "$p/$name.key" -subj "$subject" -out "$p/$name.csr" 2>/dev/null
  openssl x509 -req -in "$p/$name.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 30 \
    -extfile "$ext" -out "$p/$name.crt" 2>/dev/null
  rm -f "$p/$name.csr" "$ext"
}

kubeconfig() {
  local dir="$1" name="$2" user="$3" out="$4"
  cat >"$out" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: postwarden-e2e
  cluster:
    server: $(cat "$dir/server")
    certificate-authority: $dir/pki/ca.crt
users:
- name: $user
  user:
    client-certificate: $dir/pki/$name.crt
    client-key: $dir/pki/$name.key
contexts:
- name: $user
  context: {cluster: postwarden-e2e, user: $user}
current-context: $user
EOF
  chmod 600 "$out"
}

# ---- processes --------------------------------------------------------------------------------

start() {
  local dir="$1" name="$2"
  shift 2
  "$@" >"$dir/logs/$name.log" 2>&1 &
  echo $! >"$dir/pids/$name"
}

wait_until() {
  local what="$1" timeout="$2"
  shift 2
  local deadline=$((SECONDS + timeout))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "timed out after ${timeout}s waiting for $what"
    sleep 0.3
  done
}

alive() { kill -0 "$(cat "$1/pids/$2")" 2>/dev/null; }

ready() {
  local dir="$1"
  for c in "${COMPONENTS[@]}"; do
    [ ! -f "$dir/pids/$c" ] || alive "$dir" "$c" || die "$c exited; see $dir/logs/$c.log: $(tail -5 "$dir/logs/$c.log")"
  done
  [ "$("$dir/bin/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz 2>/dev/null)" = ok ]
}

up() {
  local dir="$1" bin start_time=$SECONDS
  [ ! -f "$dir/pids/kube-apiserver" ] || die "$dir already holds a control plane (run down first)"
  bin="$(build)"
  mkdir -p "$dir/logs" "$dir/pids" "$dir/etcd" "$dir/volumes"
  dir="$(cd "$dir" && pwd)"
  chmod 700 "$dir/etcd"
  ln -sfn "$bin" "$dir/bin"
  export KUBECACHEDIR="$dir/kubectl-cache"
  pki "$dir"
  local etcd_port peer_port api_port
  etcd_port="$(free_port)"
  peer_port="$(free_port)"
  api_port="$(free_port)"
  echo "https://127.0.0.1:$api_port" >"$dir/server"
  cat >"$dir/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  verbs: [create, update, patch, delete, deletecollection]
- level: None
EOF

  start "$dir" etcd "$bin/etcd" --name default --data-dir "$dir/etcd" \
    --listen-client-urls "https://127.0.0.1:$etcd_port" --advertise-client-urls "https://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "default=http://127.0.0.1:$peer_port" --listen-metrics-urls "" \
    --cert-file "$dir/pki/etcd.crt" --key-file "$dir/pki/etcd.key" \
    --client-cert-auth --trusted-ca-file "$dir/pki/ca.crt" --quota-backend-bytes 4294967296 --unsafe-no-fsync

  start "$dir" kube-apiserver "$bin/kube-apiserver" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --etcd-servers "https://127.0.0.1:$etcd_port" --etcd-cafile "$dir/pki/ca.crt" \
    --etcd-certfile "$dir/pki/apiserver-etcd-client.crt" --etcd-keyfile "$dir/pki/apiserver-etcd-client.key" \
    --tls-cert-file "$dir/pki/apiserver.crt" --tls-private-key-file "$dir/pki/apiserver.key" \
    --tls-min-version VersionTLS12 --client-ca-file "$dir/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$dir/pki/sa.pub" --service-account-signing-key-file "$dir/pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 --authorization-mode Node,RBAC --anonymous-auth=false \
    --endpoint-reconciler-type none --profiling=false \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" --audit-log-maxsize 512

  kubeconfig "$dir" admin admin "$dir/kubeconfig"
  wait_until "etcd and kube-apiserver /readyz ($dir/logs)" 180 ready "$dir"

  kubeconfig "$dir" controller-manager system:kube-controller-manager "$dir/controller-manager.kubeconfig"
  kubeconfig "$dir" scheduler system:kube-scheduler "$dir/scheduler.kubeconfig"
  kubeconfig "$dir" infra postwarden-e2e-infra "$dir/infra.kubeconfig"

  start "$dir" kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 \
    --service-account-private-key-file "$dir/pki/sa.key" --root-ca-file "$dir/pki/ca.crt" \
    --use-service-account-credentials --leader-elect=false --controllers '*'
  start "$dir" kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$dir/scheduler.kubeconfig" --authentication-kubeconfig "$dir/scheduler.kubeconfig" \
    --authorization-kubeconfig "$dir/scheduler.kubeconfig" --bind-address 127.0.0.1 --secure-port 0 \
    --leader-elect=false
  start "$dir" kwok "$bin/kwok" --kubeconfig "$dir/infra.kubeconfig" \
    --manage-all-nodes=false --manage-nodes-with-label-selector type=kwok \
    --server-address "127.0.0.1:$(free_port)" --node-ip 127.0.0.1 --cidr 10.244.0.0/16 \
    --node-lease-duration-seconds 40
  start "$dir" provisioner "$bin/provisioner" --kubeconfig "$dir/infra.kubeconfig" --root "$dir/volumes"

  objects | "$bin/kubectl" --kubeconfig "$dir/kubeconfig" apply --server-side --field-manager postwarden-e2e -f - >/dev/null
  wait_until "three Ready nodes" 120 nodes_ready "$dir"
  wait_until "the default ServiceAccount" 60 "$bin/kubectl" --kubeconfig "$dir/kubeconfig" -n default get serviceaccount default
  echo "controlplane: up in $((SECONDS - start_time)) s at $(cat "$dir/server"); kubeconfig $dir/kubeconfig" >&2
}

nodes_ready() {
  ready "$1" || return 1
  [ "$("$1/bin/kubectl" --kubeconfig "$1/kubeconfig" get nodes -l type=kwok \
    -o jsonpath='{range .items[*]}{.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}' | grep -c True)" \
    -eq "${#NODES[@]}" ]
}

objects() {
  local entry name zone
  for entry in "${NODES[@]}"; do
    name="${entry%%:*}"
    zone="${entry##*:}"
    cat <<EOF
apiVersion: v1
kind: Node
metadata:
  name: $name
  annotations:
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    type: kwok
    kubernetes.io/arch: amd64
    kubernetes.io/os: linux
    kubernetes.io/hostname: $name
    topology.kubernetes.io/region: region-1
    topology.kubernetes.io/zone: $zone
status:
  allocatable: {cpu: "16", memory: 64Gi, pods: "110", ephemeral-storage: 500Gi}
  capacity: {cpu: "16", memory: 64Gi, pods: "110", ephemeral-storage: 500Gi}
---
EOF
  done
  cat <<'EOF'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations:
    storageclass.kubernetes.io/is-default-class: "true"
provisioner: postwarden.dev/e2e-hostpath
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: fixed
provisioner: postwarden.dev/e2e-hostpath
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
EOF
}

down() {
  local dir="$1" i name pid
  [ -d "$dir/pids" ] || return 0
  for ((i = ${#COMPONENTS[@]} - 1; i >= 0; i--)); do
    name="${COMPONENTS[$i]}"
    [ -f "$dir/pids/$name" ] || continue
    pid="$(cat "$dir/pids/$name")"
    # Only a process still running our binary: a pid reused since is left alone.
    if [ "$(readlink "/proc/$pid/exe" 2>/dev/null | xargs -r basename)" = "$name" ]; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
      kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$dir/pids/$name"
  done
}

case "${1:-}" in
  build) build ;;
  up) [ -n "${2:-}" ] || die "usage: $0 up DIR"; up "$2" ;;
  down) [ -n "${2:-}" ] || die "usage: $0 down DIR"; down "$2" ;;
  *) die "usage: $0 build | up DIR | down DIR" ;;
esac
