"""ONNX export of trained NTMs and the parity checks that prove the graphs compute what torch computes.

`python -m ntm_serve.export FOLDER...` writes `step.onnx`, `sequence.onnx` and `initial_state.onnx` into each
model folder (see docs/onnx-contract.md); `python -m ntm_serve.export.parity FOLDER` prints the parity table.
"""
