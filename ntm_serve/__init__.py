"""ntm-serve: Neural Turing Machines trained in PyTorch, exported to ONNX, served over gRPC with per-session memory.

Subpackages, each one job (docs/architecture.md): `contract` (the names the graphs share), `api` (the gRPC
contract's generated code, the tensor codec, the session header), `client` (the SDK: the base install),
`runtime` (onnxruntime sessions, stepping, the state pool), `server` (the gRPC server; `server.state` keeps
sessions: memory, snapshots or a shared store), `cluster` (the local cluster launcher and proxy configs),
`demos` (the command-line demos), `plots`, `training` and `export`.
"""
