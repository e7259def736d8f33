"""Data sets the package reads with numpy alone, for training and the demos alike (no torch)."""
