"""Ctrl-C during a conversion always ends the run with 130, the old bundle intact and nothing partial left.

A SIGINT used to be lost two ways: (1) Python raised the KeyboardInterrupt inside TensorFlow's
AtomicFunction.__del__, where exceptions are printed as "Exception ignored" and dropped, and the conversion went on
to replace the old bundle with exit 0; (2) it landed in TensorFlow's exit handlers (seconds long) after the run.
The CLI's own SIGINT handler now records every interrupt, the bundle swap checks the record first, unraisable
interrupts print nothing, and the process ends as soon as its outcome is printed. The seeded random-time test
hits case (1) with seed 11 on this machine."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.cli.harness import assert_failed_cleanly, interrupt_after, leftovers, tree_digest


def convert_and_interrupt(fixture_bundles, tmp_path, when):
    old = tmp_path / "b"
    shutil.copytree(fixture_bundles / "classifier-fp32", old)
    before = tree_digest(old)
    args = ["convert", "savedmodel", fixture_bundles / "classifier-savedmodel", "--out", old]
    result, sent = interrupt_after(args, tmp_path, when=when)
    if result.returncode == 0:
        # The signal came after the outcome was printed: the run is complete and the new bundle whole.
        assert result.stdout.strip() == str(old), result.stderr
        assert json.loads((old / "manifest.json").read_text())["created"]
        assert not leftovers(tmp_path)
        return "finished"
    assert sent, result.stderr
    assert_failed_cleanly(result, exit_code=130, tmp=tmp_path)
    assert tree_digest(old) == before, "the old bundle changed"
    return "interrupted"


@pytest.mark.parametrize("marker, outcomes", [("[liteship] converting", {"interrupted"}),
                                               # the bundle is written milliseconds after this line: either is right
                                               ("[liteship] converted", {"interrupted", "finished"})])
def test_ctrl_c_at_each_stage_keeps_the_old_bundle(marker, outcomes, fixture_bundles, tmp_path):
    outcome = convert_and_interrupt(fixture_bundles, tmp_path, when=lambda err: marker in err)
    assert outcome in outcomes


@pytest.mark.slow
def test_ctrl_c_at_random_times(fixture_bundles, tmp_path):
    import time

    rng = np.random.default_rng(11)
    outcomes = []
    for i in range(6):
        delay = float(rng.uniform(0.5, 14.0))
        folder = tmp_path / str(i)
        folder.mkdir()
        start = time.monotonic()
        outcomes.append(convert_and_interrupt(fixture_bundles, folder,
                                              when=lambda err, s=start, d=delay: time.monotonic() - s > d))
    assert "interrupted" in outcomes
