#!/bin/sh
# One process of the replicated session store (docs/scale-out.md, "The store"): `store.sh node` runs a Valkey data
# node, `store.sh sentinel` a Sentinel. The same text runs in docker compose (this file) and on Kubernetes (the
# ntm-store-script ConfigMap in deploy/kubernetes/store.yaml; a test keeps the two equal), and the local launcher
# (ntm_serve/cluster/launcher.py) follows the same rules:
#
# - A data node starts as a replica of the primary the Sentinels name. When they name this very node (it died and
#   their failover is under way, or nothing else could be promoted), it waits for them to name another, up to
#   NTM_STORE_REJOIN_WAIT_S, and only then starts as the primary with its own data. So a restarted node never
#   comes back as a second primary, and one whose disk was lost never hands an empty data set to the replicas.
# - When no Sentinel answers (the first start), the first node (NTM_STORE_FIRST) is the primary.
# - A Sentinel starts from its own saved config when it has one (it knows the current primary); else it asks the
#   other Sentinels which node is the primary, else watches the first node.
#
# Env: NTM_STORE_SELF (this process's host name as the others reach it), NTM_STORE_FIRST (the first data node's
# host name), NTM_SENTINELS ("host:port host:port ..."), NTM_STORE_MIN_REPLICAS (a primary refuses writes with
# fewer replicas confirming within 2 s), NTM_SENTINEL_DOWN_MS, NTM_SENTINEL_FAILOVER_MS; for tests also
# NTM_STORE_PORT, NTM_STORE_DIR, NTM_SENTINEL_PORT, NTM_SENTINEL_CONF.
set -eu
SERVICE=ntm
PORT=${NTM_STORE_PORT:-6379}
SENTINEL_PORT=${NTM_SENTINEL_PORT:-26379}

named_primary() {  # "host:port" of the primary the first answering Sentinel names; empty when none answers
  for s in $NTM_SENTINELS; do
    reply=$(valkey-cli -h "${s%:*}" -p "${s##*:}" --raw SENTINEL get-master-addr-by-name "$SERVICE" 2>/dev/null \
      | tr '\n' ' ') || true
    set -- $reply
    if [ $# -eq 2 ]; then echo "$1:$2"; return; fi
  done
}

case "${1:-}" in
node)
  self="$NTM_STORE_SELF:$PORT"
  primary=$(named_primary)
  waited=0
  while [ "$primary" = "$self" ] && [ "$waited" -lt "${NTM_STORE_REJOIN_WAIT_S:-30}" ]; do
    sleep 1
    waited=$((waited + 1))
    primary=$(named_primary)
  done
  if [ -z "$primary" ]; then primary="$NTM_STORE_FIRST:$PORT"; fi
  set -- --port "$PORT" --dir "${NTM_STORE_DIR:-/data}" --appendonly yes --appendfsync always --save "" \
    --protected-mode no --repl-diskless-sync-delay 0 --replica-announce-ip "$NTM_STORE_SELF" \
    --min-replicas-to-write "${NTM_STORE_MIN_REPLICAS:-1}" --min-replicas-max-lag 2
  if [ "$primary" != "$self" ]; then set -- "$@" --replicaof "${primary%:*}" "${primary##*:}"; fi
  exec valkey-server "$@"
  ;;
sentinel)
  conf=${NTM_SENTINEL_CONF:-/sentinel/sentinel.conf}  # on a volume, writable: the Sentinel saves what it learns
  if [ ! -s "$conf" ]; then
    primary=$(named_primary)
    if [ -z "$primary" ]; then primary="$NTM_STORE_FIRST:$PORT"; fi
    cat > "$conf" <<EOF
port $SENTINEL_PORT
protected-mode no
sentinel resolve-hostnames yes
sentinel announce-hostnames yes
sentinel announce-ip $NTM_STORE_SELF
sentinel monitor $SERVICE ${primary%:*} ${primary##*:} 2
sentinel down-after-milliseconds $SERVICE ${NTM_SENTINEL_DOWN_MS:-5000}
sentinel failover-timeout $SERVICE ${NTM_SENTINEL_FAILOVER_MS:-15000}
sentinel parallel-syncs $SERVICE 1
EOF
  fi
  exec valkey-server "$conf" --sentinel
  ;;
*)
  echo "usage: store.sh node|sentinel" >&2
  exit 2
  ;;
esac
