"""The onnxruntime side shared by the server, the parity checks and the benchmarks: sessions, stepping, state pool."""
