"""Command-line demos that call a running server as any client application would (the [demo] extra)."""
