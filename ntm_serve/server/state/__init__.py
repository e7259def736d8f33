"""Where a session's state is kept beyond the engine's rows: snapshots on disk and the shared store of replicas."""
