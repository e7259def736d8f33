"""The ntm-serve gRPC service: NTM models (ONNX graphs) served by onnxruntime with per-session memory.

Never imports torch: the serving install (`pip install .`) has none.
"""
