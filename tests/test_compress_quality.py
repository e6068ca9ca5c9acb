"""The issue's quality targets on small, fast versions of the real-data models (sklearn digits MLP,
character-level Llama on Python's documentation), trained here from scratch (no cache)."""
import json

import pytest
import torch

from sparseinfer import CSRLinear, Int8Linear, Sparse24Linear
from sparseinfer.quality import methods
from sparseinfer.quality.run import check_targets, default_tasks, run_task
from sparseinfer.quality.tasks import char_lm_task, digits_mlp_task

pytest.importorskip("sklearn", reason="the digits data set ships with scikit-learn (pip install '.[test]')")


@pytest.fixture(scope="module")
def digits_rows():
    task = digits_mlp_task(hidden=256, train_steps=500)
    only = {"int8 PTQ W8A8", "2:4 + finetune", "gradual 90% + KD", "magnitude 90%", "sparsegpt 50%", "50% + int8"}
    return {row.method: row for row in run_task(task, fast=True, use_cache=False, only=only)}


def test_digits_model_learns(digits_rows):
    assert digits_rows["dense"].metric > 95.0


def test_int8_ptq_costs_at_most_half_a_point(digits_rows):
    assert digits_rows["int8 PTQ W8A8"].delta >= -0.5
    assert digits_rows["int8 PTQ W8A8"].size_ratio < 0.3


def test_2_4_with_short_finetune_costs_at_most_one_point(digits_rows):
    assert digits_rows["2:4 + finetune"].delta >= -1.0


def test_gradual_90_with_distillation_costs_at_most_two_points(digits_rows):
    assert digits_rows["gradual 90% + KD"].delta >= -2.0
    # ...where one-shot pruning to the same sparsity is far worse: the schedule and KD matter.
    assert digits_rows["magnitude 90%"].delta < digits_rows["gradual 90% + KD"].delta - 2.0
    assert digits_rows["gradual 90% + KD"].size_ratio < 0.25


def test_joint_sparsegpt_int8_row(digits_rows):
    """Pruned + int8 (W8A8 as the kernels compute it) costs at most one test image over the same
    SparseGPT pruning in float, at a third of its size (the heavy rows run in the full command)."""
    joint, alone = digits_rows["50% + int8"], digits_rows["sparsegpt 50%"]
    assert joint.metric >= alone.metric - 0.3
    assert joint.size_ratio < 0.4 * alone.size_ratio


def test_targets_are_reported(digits_rows):
    checks = check_targets(list(digits_rows.values()))
    assert len(checks) == 3 and all(met for _, met, _ in checks)


@pytest.fixture(scope="module")
def lm_task():
    pytest.importorskip("transformers")
    return char_lm_task(hidden=64, layers=2, train_steps=600, max_chars=150_000, eval_windows=24)


def test_wanda_beats_magnitude_on_the_char_lm(lm_task):
    names = {"magnitude (layer)", "wanda (layer)", "magnitude (row)", "wanda (row)"}
    rows = {row.method: row for row in run_task(lm_task, fast=True, use_cache=False, only=names)}
    assert rows["dense"].metric < 8.0  # learned far beyond uniform over 96 characters
    for group in ("layer", "row"):
        assert rows["dense"].metric < rows[f"wanda ({group})"].metric < rows[f"magnitude ({group})"].metric


def test_recipes_produce_our_layers(lm_task):
    torch.manual_seed(0)
    dense = lm_task.build()
    for recipe, layer in ((methods.wanda(0.5, lm=True), CSRLinear), (methods.sparsegpt(0.0, (2, 4), lm=True), Sparse24Linear),
                          (methods.ptq("dynamic"), Int8Linear)):
        import copy
        model = recipe(lm_task, copy.deepcopy(dense)).model
        assert isinstance(model.model.layers[0].mlp.down_proj, layer)
        assert isinstance(model.lm_head, Int8Linear if layer is Int8Linear else torch.nn.Linear)


def test_cli_quality_writes_json(tmp_path, monkeypatch, capsys):
    from sparseinfer.cli import main
    monkeypatch.setenv("SPARSEINFER_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "q.json"
    assert main(["quality", "--fast", "--tasks", "mlp", "--methods", "int8 PTQ W8A8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "int8 PTQ W8A8" in text and "digits-mlp" in text
    data = json.loads(out.read_text())
    assert {r["method"] for r in data["rows"]} == {"dense", "int8 PTQ W8A8"}
    assert data["machine"]["torch"] == torch.__version__
    assert list((tmp_path / "cache" / "quality").glob("*.safetensors"))  # the trained model is cached
    assert main(["quality", "--fast", "--tasks", "mlp", "--methods", "no such method"]) == 2
