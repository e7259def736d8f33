"""The Envoy configuration of the cluster's proxy (one definition, for the local launcher and for Kubernetes).

Routing: consistent hashing (Maglev by default, or ring hash) on the `x-ntm-session` header that the SDK sets
on every session-scoped call, so a session's calls land on one replica and, when replicas join or leave, only
about 1/N of the sessions move. Measured through this config (benchmarks/cluster_bench.py, 150 sessions, 3
replicas, one leaves and rejoins): Maglev moved exactly the leaver's sessions (57, then the same 57 back);
Envoy's ring hash moved 61 for a leaver holding 52, because it rescales every host's points to its minimum
ring size when the host count changes. A call without the header (ListModels, CreateSession) goes to any
healthy replica. A session in a placement group also carries `x-ntm-group` (ntm_serve/api/headers.py), hashed
instead when present (a terminal hash policy), so a group's sessions, and its packed messages, share a replica.
Active gRPC health checks (`grpc.health.v1`, service `ntm.v1.NTM`) take a draining or dead replica out of the
ring; panic routing is off (an unhealthy replica never gets traffic). Routes have no timeout and streams no
idle timeout: a stream lives as long as its client keeps it. Envoy retries a call on another host only when
it provably never reached a replica (connect failure, refused stream, reset before the request was sent) or
when a replica answered a unary call UNAVAILABLE (which it does only for work it did not apply: draining,
store unreachable before the commit, weights it lacks), so a session whose hash lands on a replica without
its weights is served by one that has them; everything else is the SDK's to retry, with `expect_steps`.
"""

from __future__ import annotations

import json
from typing import Any

from ntm_serve.api.headers import GROUP_HEADER, SESSION_HEADER

HEALTH_SERVICE = "ntm.v1.NTM"
_T = "type.googleapis.com/"


def envoy_config(listen: tuple[str, int], admin: tuple[str, int], upstreams: list[tuple[str, int]], *,
                 dns: bool = False, lb_policy: str = "MAGLEV", health_interval_s: float = 0.5,
                 health_timeout_s: float = 1.0, connect_timeout_s: float = 0.5, reuse_port: bool = True
                 ) -> dict[str, Any]:
    """The bootstrap config: a listener on `listen` routing to `upstreams` (static addresses, or with `dns`
    host names resolved to every address they have, e.g. a Kubernetes headless service). reuse_port=False: the
    listener fails to bind a port another process listens on, instead of sharing it (SO_REUSEPORT, Envoy's
    default on Linux), which is how the local launcher knows it lost a picked port."""
    if lb_policy not in ("RING_HASH", "MAGLEV"):
        raise ValueError(f"lb_policy must be RING_HASH or MAGLEV (consistent hashing), got {lb_policy!r}")
    if not upstreams:
        raise ValueError("the proxy needs at least one replica address")
    route = {
        "cluster": "replicas",
        "timeout": "0s",  # no route timeout: streams last as long as their clients want
        "hash_policy": [{"header": {"header_name": GROUP_HEADER}, "terminal": True},  # absent: the next one
                        {"header": {"header_name": SESSION_HEADER}}],
        "retry_policy": {
            "retry_on": "connect-failure,refused-stream,reset-before-request,unavailable",
            "num_retries": 3,
            "retry_host_predicate": [{"name": "envoy.retry_host_predicates.previous_hosts", "typed_config": {
                "@type": _T + "envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"}}],
            "host_selection_retry_max_attempts": 5,
        },
    }
    manager = {
        "@type": _T + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "ntm",
        "codec_type": "HTTP2",
        "stream_idle_timeout": "0s",
        "http2_protocol_options": {},
        "route_config": {"name": "ntm", "virtual_hosts": [
            {"name": "ntm", "domains": ["*"], "routes": [{"match": {"prefix": "/"}, "route": route}]}]},
        "http_filters": [{"name": "envoy.filters.http.router",
                          "typed_config": {"@type": _T + "envoy.extensions.filters.http.router.v3.Router"}}],
    }
    cluster: dict[str, Any] = {
        "name": "replicas",
        "type": "STRICT_DNS" if dns else "STATIC",
        "lb_policy": lb_policy,
        "connect_timeout": f"{connect_timeout_s}s",
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": _T + "envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": {"cluster_name": "replicas", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
            for host, port in upstreams]}]},
        "health_checks": [{
            "timeout": f"{health_timeout_s}s", "interval": f"{health_interval_s}s",
            "unhealthy_threshold": 1, "healthy_threshold": 1, "no_traffic_interval": f"{health_interval_s}s",
            "grpc_health_check": {"service_name": HEALTH_SERVICE}}],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
    }
    if dns:
        cluster["dns_refresh_rate"] = "2s"
        cluster["respect_dns_ttl"] = False
    listener: dict[str, Any] = {
        "name": "ntm", "address": {"socket_address": {"address": listen[0], "port_value": listen[1]}},
        "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                        "typed_config": manager}]}]}
    if not reuse_port:
        listener["enable_reuse_port"] = False
    return {
        "admin": {"address": {"socket_address": {"address": admin[0], "port_value": admin[1]}}},
        "static_resources": {"listeners": [listener], "clusters": [cluster]},
    }


COMPOSE_REPLICAS = ("ntm-replica-1", "ntm-replica-2")  # the replica services of docker-compose.yml's cluster profile


def deployment_config(target: str) -> str:
    """The proxy config committed for a deployment: "kubernetes" (deploy/kubernetes/proxy.yaml: the headless
    service `ntm-replicas`, every ready pod) or "compose" (deploy/compose/envoy.json: the replica services)."""
    upstreams = {"kubernetes": [("ntm-replicas", 50051)], "compose": [(name, 50051) for name in COMPOSE_REPLICAS]}
    if target not in upstreams:
        raise ValueError(f"target must be kubernetes or compose, got {target!r}")
    config = envoy_config(("0.0.0.0", 8080), ("127.0.0.1", 9901), upstreams[target], dns=True, health_interval_s=1.0)
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
