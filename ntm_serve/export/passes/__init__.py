"""Value-preserving ONNX graph passes, applied after an unoptimised export (docs/export.md)."""
