"""Run a session-affine cluster on this machine, or print the proxy config of a deployment.

`python -m ntm_serve.cluster up --replicas 3 [--store-replicas 2]`: store (with --store-replicas, a primary,
its replicas and three Sentinels), replicas and proxy on loopback; one JSON line with the proxy address and
every process's pid and port (each store process with its role); then a process that exits is restarted, as
Kubernetes would, after a back-off doubling from 1 s to 30 s, with one JSON line per event
(ntm_serve/cluster/supervisor.py); everything stopped on Ctrl-C / SIGTERM.

`python -m ntm_serve.cluster envoy-config --for kubernetes|compose`: the proxy config committed in
deploy/kubernetes/proxy.yaml and deploy/compose/envoy.json."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path

from ntm_serve.cluster.envoy import deployment_config
from ntm_serve.cluster.launcher import ClusterError, LocalCluster
from ntm_serve.cluster.supervisor import BackOff, Supervisor


def main(argv: list[str] | None = None) -> int:
    env = os.environ
    parser = argparse.ArgumentParser(prog="python -m ntm_serve.cluster", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    up = sub.add_parser("up", help="run a local cluster until Ctrl-C / SIGTERM",
                        description="Start a store, replicas and an Envoy proxy on loopback, restart any that "
                                    "exits (after a back-off), and run them until Ctrl-C / SIGTERM.")
    up.add_argument("--replicas", type=int, default=int(env.get("NTM_CLUSTER_REPLICAS", "3")),
                    help="number of replicas [env NTM_CLUSTER_REPLICAS; default 3]")
    up.add_argument("--models", type=Path, default=Path(env.get("NTM_MODELS", "models")),
                    help="models directory for every replica [env NTM_MODELS; default models]")
    up.add_argument("--provider", default=env.get("NTM_PROVIDER", "auto"), choices=("auto", "cuda", "cpu"),
                    help="execution provider of the replicas [env NTM_PROVIDER; default auto]")
    up.add_argument("--commit-every", type=int, default=int(env.get("NTM_COMMIT_EVERY", "1")),
                    help="see python -m ntm_serve.server --help [env NTM_COMMIT_EVERY; default 1]")
    up.add_argument("--store-replicas", type=int, default=int(env.get("NTM_CLUSTER_STORE_REPLICAS", "0")),
                    help="store replicas beside the store's primary; > 0 also starts three Sentinels that promote a "
                         "replica when the primary is down, and the replicas find the store through them "
                         "[env NTM_CLUSTER_STORE_REPLICAS; default 0: one store process]")
    up.add_argument("--store-min-replicas", type=int, default=None,
                    help="store replicas every write (a step's commit, a take-over) must reach before it is "
                         "acknowledged; refused UNAVAILABLE otherwise [default 1 with --store-replicas, else 0]")
    up.add_argument("--store-wait-ms", type=int, default=1000,
                    help="how long a write waits for those store replicas [default 1000]")
    up.add_argument("--sentinel-down-ms", type=int, default=1000,
                    help="the Sentinels call the primary down after this long without an answer, then fail over "
                         "[default 1000]")
    up.add_argument("--lb-policy", default=env.get("NTM_CLUSTER_LB_POLICY", "MAGLEV"),
                    choices=("RING_HASH", "MAGLEV"),
                    help="the proxy's consistent hash [env NTM_CLUSTER_LB_POLICY; default MAGLEV]")
    up.add_argument("--workdir", type=Path, default=Path(env["NTM_CLUSTER_WORKDIR"])
                    if env.get("NTM_CLUSTER_WORKDIR") else None,
                    help="store data and logs [env NTM_CLUSTER_WORKDIR; default a temporary directory]")
    up.add_argument("--restart-backoff-s", type=float, default=BackOff.initial_s,
                    help="wait before restarting a process that exited; doubles with each restart in a row "
                         f"[default {BackOff.initial_s:g}]")
    up.add_argument("--restart-backoff-max-s", type=float, default=BackOff.max_s,
                    help=f"the longest wait before a restart [default {BackOff.max_s:g}]")
    up.add_argument("--restart-reset-s", type=float, default=BackOff.reset_after_s,
                    help="a process that ran this long since its restart waits the shortest time again "
                         f"[default {BackOff.reset_after_s:g}]")
    config = sub.add_parser("envoy-config", help="print the proxy config of a deployment",
                            description="Print the Envoy config of a deployment: the committed deploy/ copies are this "
                                        "output (a test checks they match).")
    config.add_argument("--for", dest="target", choices=("kubernetes", "compose"), default="kubernetes",
                        help="deploy/kubernetes/proxy.yaml or deploy/compose/envoy.json [default kubernetes]")
    args = parser.parse_args(argv)
    if args.command == "envoy-config":
        sys.stdout.write(deployment_config(args.target))
        return 0
    if args.replicas < 1:
        parser.error("--replicas must be >= 1")
    if args.store_replicas < 0:
        parser.error("--store-replicas must be >= 0")
    if args.store_min_replicas is not None and not 0 <= args.store_min_replicas <= args.store_replicas:
        parser.error(f"--store-min-replicas must be in 0..--store-replicas ({args.store_replicas})")
    if args.store_wait_ms < 1 or args.sentinel_down_ms < 100:
        parser.error("--store-wait-ms must be >= 1 and --sentinel-down-ms >= 100")
    if not 0 < args.restart_backoff_s <= args.restart_backoff_max_s or args.restart_reset_s < 0:
        parser.error("restart back-off: 0 < --restart-backoff-s <= --restart-backoff-max-s, --restart-reset-s >= 0")
    if not args.models.is_dir():
        parser.error(f"models directory {args.models} does not exist")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    cluster = LocalCluster(args.models, args.replicas, args.provider, args.commit_every, args.workdir,
                           args.lb_policy, store_replicas=args.store_replicas,
                           store_min_replicas=args.store_min_replicas, store_wait_ms=args.store_wait_ms,
                           sentinel_down_ms=args.sentinel_down_ms)
    try:
        cluster.start()
    except ClusterError as err:
        print(f"cannot start the cluster: {err}", file=sys.stderr)
        return 2
    print(json.dumps(cluster.describe()), flush=True)
    backoff = BackOff(args.restart_backoff_s, args.restart_backoff_max_s, args.restart_reset_s)
    Supervisor(cluster, lambda event: print(json.dumps(event), flush=True), backoff).run(stop)  # this thread
    cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
