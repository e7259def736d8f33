"""Client and command line of the `ntm.v1.ModelAdmin` service: load, unload and list model versions.

    python -m ntm_serve.client.admin status                        # every version: LOADED, UNLOADING, FAILED
    python -m ntm_serve.client.admin load copy --version 2         # load models/copy/2/ now (no need to wait a poll)
    python -m ntm_serve.client.admin unload copy --version 1       # no new sessions; gone when its sessions end
    python -m ntm_serve.client.admin unload copy --version 1 --force   # end its sessions now

`--target` (or NTM_TARGET, default localhost:50051), `--token` (or NTM_ADMIN_TOKEN: one of the server's
--admin-tokens) and `--tls-ca` (or NTM_CLIENT_TLS_CA). Prints one JSON object per version.

The server answers only when started with `--model-control` or `--admin-tokens`; by default every call is
refused (PERMISSION_DENIED), so nobody who can reach the port can unload a model and end its sessions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

import grpc
from google.protobuf.json_format import MessageToDict

from ntm_serve.api.proto_gen.ntm.v1 import ntm_pb2, ntm_pb2_grpc
from ntm_serve.api.tls import channel_credentials


class ModelAdminClient:
    def __init__(self, target: str = "localhost:50051", *, token: str | None = None, timeout: float | None = None,
                 tls_ca: str | None = None, channel: grpc.Channel | None = None) -> None:
        if channel is None:
            channel = (grpc.secure_channel(target, channel_credentials(tls_ca, None, None)) if tls_ca
                       else grpc.insecure_channel(target))
        self.channel = channel
        self.stub = ntm_pb2_grpc.ModelAdminStub(channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> ModelAdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: object) -> list[ntm_pb2.VersionStatus]:
        response = getattr(self.stub, method)(request, timeout=self.timeout, metadata=self.metadata)
        return list(response.versions)

    def load(self, model: str, version: int | None = None) -> list[ntm_pb2.VersionStatus]:
        return self._call("LoadModel", ntm_pb2.LoadModelRequest(model=model, version=version))

    def unload(self, model: str, version: int, force: bool = False) -> list[ntm_pb2.VersionStatus]:
        return self._call("UnloadModel", ntm_pb2.UnloadModelRequest(model=model, version=version, force=force))

    def status(self, model: str = "") -> list[ntm_pb2.VersionStatus]:
        return self._call("ModelStatus", ntm_pb2.ModelStatusRequest(model=model))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ntm_serve.client.admin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default=os.environ.get("NTM_TARGET", "localhost:50051"),
                        help="server host:port (env NTM_TARGET; default localhost:50051)")
    parser.add_argument("--token", default=os.environ.get("NTM_ADMIN_TOKEN"),
                        help="one of the server's --admin-tokens, sent as a bearer token (env NTM_ADMIN_TOKEN)")
    parser.add_argument("--tls-ca", default=os.environ.get("NTM_CLIENT_TLS_CA"),
                        help="CA bundle to check the server's certificate with: the call goes over TLS "
                             "(env NTM_CLIENT_TLS_CA; default plaintext)")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the answer (a load compiles the graphs; default 120)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    status = commands.add_parser("status", help="list every version and its state (LOADED, UNLOADING, FAILED)",
                                 description="List the versions the server knows, one JSON object each.")
    status.add_argument("model", nargs="?", default="", help="only this model's versions (default: every model)")
    load = commands.add_parser("load", help="load a version now, without waiting for the next poll",
                               description="Load a model version from the models directory now.")
    load.add_argument("model", help="model name: the folder under the server's --models")
    load.add_argument("--version", type=int, help="version folder to load (default: the newest on disk)")
    unload = commands.add_parser("unload", help="take a version out of service",
                                 description="Stop a version taking new sessions; it goes when its sessions end "
                                             "(or at once with --force).")
    unload.add_argument("model", help="model name")
    unload.add_argument("--version", type=int, required=True, help="the version to unload")
    unload.add_argument("--force", action="store_true",
                        help="end the version's live sessions now instead of waiting for them to end")
    args = parser.parse_args(argv)
    with ModelAdminClient(args.target, token=args.token, timeout=args.timeout, tls_ca=args.tls_ca) as client:
        try:
            if args.command == "status":
                versions = client.status(args.model)
            elif args.command == "load":
                versions = client.load(args.model, args.version)
            else:
                versions = client.unload(args.model, args.version, args.force)
        except grpc.RpcError as err:
            print(f"{err.code().name}: {err.details()}", file=sys.stderr)
            return 1
    for version in versions:
        print(json.dumps(MessageToDict(version, preserving_proto_field_name=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
