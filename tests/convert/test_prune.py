"""The pruning options and the schedule every family shares (convert/prune.py); no training here."""

from __future__ import annotations

import pytest

from liteship.convert import prune as P
from liteship.errors import ConvertError


@pytest.mark.parametrize("text, want", [("2:4", (2, 4)), (" 1 : 8 ", (1, 8)), (None, None)])
def test_m_by_n_parses(text, want):
    assert P.parse_m_by_n(text) == want


@pytest.mark.parametrize("text", ["4:2", "2-4", "0:4", "2:2", "x"])
def test_bad_m_by_n_is_a_one_line_error(text):
    with pytest.raises(ConvertError, match="M:N"):
        P.parse_m_by_n(text)


@pytest.mark.parametrize("options, message", [
    (dict(method="pyramid"), "unknown --method"),
    (dict(sparsity=1.0), "below 1"),
    (dict(method="structured", m_by_n=(2, 4)), "magnitude-pruning pattern"),
    (dict(method="magnitude", steps=1), "--steps 2 or more"),
    (dict(learning_rate=0), "must be positive"),
    (dict(method="magnitude", qat=True), "does not keep magnitude pruning's zeros"),
])
def test_options_are_checked_before_any_work(options, message):
    with pytest.raises(ConvertError, match=message):
        P.PruneOptions(**options)


@pytest.mark.parametrize("steps", [2, 5, 100, 1000])
def test_schedule_reaches_the_target_on_a_mask_update_before_the_last_step(steps):
    pytest.importorskip("tensorflow_model_optimization")
    schedule = P.pruning_params(P.PruneOptions(method="magnitude", sparsity=0.5, steps=steps))["pruning_schedule"]
    config = schedule.get_config()["config"]
    end, frequency = config["end_step"], config["frequency"]
    assert end < steps and end % frequency == 0  # the final update happens, and fine-tuning continues after it
    update, sparsity = schedule(end)
    assert bool(update) and float(sparsity) == pytest.approx(0.5)


def test_staged_file_output_is_renamed_with_its_record(tmp_path):
    source = tmp_path / "source.npz"
    source.write_bytes(b"src")
    out = tmp_path / "out.npz"
    with P.staged_output(out, source, folder=False) as staged:
        staged.write_bytes(b"new")
        P.sidecar_path(staged).write_text("{}")
        assert not out.exists()
    assert out.read_bytes() == b"new" and P.sidecar_path(out).read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "out.npz.pruning.json", "source.npz"]


def test_staged_output_refuses_the_source_and_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ConvertError, match="is the source itself"):
        with P.staged_output(tmp_path / "mine", tmp_path / "mine", folder=True):
            pass
    with pytest.raises(ConvertError, match="not a liteship prune output"):
        with P.staged_output(tmp_path / "mine", tmp_path / "src", folder=True):
            pass
    assert (tmp_path / "mine" / "photo.jpg").read_bytes() == b"x"
