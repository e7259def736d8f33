"""Benchmarks: scripts that print markdown tables and write JSON, never timed tests.

`python -m benchmarks [--quick] [--only engine,shapes,service,memory,gpu] [--out DIR]` runs them.
Every comparison inside one benchmark is measured side by side in the same process and run,
interleaved round by round, so background load hits all contenders alike.
"""
