"""What the client and the server share: the generated gRPC code, the tensor codec, status helpers, TLS, headers.

Imports nothing but grpcio, protobuf, numpy and the standard library: the client's base install.
"""
