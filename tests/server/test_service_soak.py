"""The soak test, short: 16 sessions x 200 steps through a real server process, with random chunking, streams,
disconnects, reconnects, a graceful restart and a kill -9 (tests/soak.py; `make soak` runs the long one)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import Offline
from soak import SoakConfig, offline_reference, run_soak


def test_soak_reference_is_the_servers_layout(copy_dir: Path, offline: Offline) -> None:
    """The soak's batched offline run equals the tests' one-session reference bit for bit (batch invariance)."""
    inputs = np.random.default_rng(3).integers(0, 2, (6, 50, 9)).astype(np.float32)
    outputs, state = offline_reference(copy_dir / "copy", inputs, group=4, window=20)  # 2 groups, 3 windows
    for k in (0, 5):
        single = offline.run(inputs[k])
        np.testing.assert_array_equal(outputs[k], single["outputs"])
        for name, value in single["state"].items():
            np.testing.assert_array_equal(state[name][k], value, err_msg=name)


def test_short_soak(copy_dir: Path, tmp_path: Path) -> None:
    config = SoakConfig(models=copy_dir, sessions=16, steps=200, workers=4, disconnect_p=0.2, restarts=1, kills=1,
                        snapshot_interval_s=0.5, timeout_s=120)
    report = run_soak(config, tmp_path)
    print(report.table())
    assert report.ok, report.table() + "\n" + "\n".join(report.tally.violations)
    assert sorted(report.exit_codes) == [-9, 0, 0]  # a kill, a graceful restart, the final graceful stop
    assert report.tally.disconnects > 0 and report.tally.resyncs > 0 and report.tally.streams > 0
    assert report.checked_outputs > 0.8 * config.sessions * config.steps
