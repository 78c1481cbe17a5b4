"""`medhash train` / `medhash evaluate` end to end on a tiny folder of PNGs, through typer."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medhash.commands.learning import app
from tests.shared.learning.synthetic import write_png_folder

pytestmark = pytest.mark.unit


def test_train_resume_and_evaluate_end_to_end(tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "data", num_classes=3, per_class=10, size=40)
    model = tmp_path / "model.pt"
    runner = CliRunner()
    common = ["--method", "dafh", "--bits", "16", "--image-size", "32", "--backbone", "efficientnet_b0",
              "--batch-size", "12", "--out", str(model), "--device", "cpu", "--threads", "1"]
    r = runner.invoke(app, ["train", str(data), "--epochs", "1", "--log-dir", str(tmp_path / "log"),
                            "--lr-schedule", "cosine", "--triplet-mining", "all", *common])
    assert r.exit_code == 0, r.output
    assert torch.load(model, weights_only=True)["training_state"]["epoch"] == 1
    r = runner.invoke(app, ["train", str(data), "--epochs", "2", "--resume", str(model), *common])
    assert r.exit_code == 0, r.output
    assert torch.load(model, weights_only=True)["training_state"]["epoch"] == 2
    rows = (tmp_path / "log" / "train_log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step,loss") and len(rows) == 1 + 3  # 30 images / 12 -> 3 steps
    lrs = [float(row["lr"]) for row in csv.DictReader(rows)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[1] == pytest.approx(0.75e-4)  # cosine over 3 steps

    out = tmp_path / "eval.json"
    r = runner.invoke(app, ["evaluate", str(model), "--database", str(data), "--queries", str(data),
                            "--json", str(out), "--plots", str(tmp_path / "plots"), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    metrics = json.loads(out.read_text())
    for key in ("map@1", "map@10", "map@100", "map", "tie_aware_map@10", "precision@10", "per_class",
                "classifier_top1"):  # dafh has a classifier
        assert key in metrics
    assert 0.0 <= metrics["map@1"] <= 1.0 and metrics["num_queries"] == 30
    assert (tmp_path / "plots" / "pr_curve.png").exists()

    r = runner.invoke(app, ["evaluate", str(model), "--split-of", str(data), "--seed", "0", "--json", str(out),
                            "--no-tie-aware", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    split = json.loads(out.read_text())
    assert split["num_queries"] == 6 and split["num_database"] == 24 and "tie_aware_map" not in split
    assert torch.load(model, weights_only=True)["metrics"]["data"]["split_of"] == str(data)


def test_train_sf_alias_on_split(tmp_path: Path) -> None:
    data = write_png_folder(tmp_path / "data", num_classes=2, per_class=10, size=32)
    model = tmp_path / "sf.pt"
    r = CliRunner().invoke(app, ["train", str(data), "--method", "sf", "--bits", "8", "--epochs", "1",
                                 "--image-size", "32", "--backbone", "efficientnet_b0", "--batch-size", "8",
                                 "--split-seed", "0", "--out", str(model), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert torch.load(model, weights_only=True)["method"] == "saliency_fusion"
    bad = CliRunner().invoke(app, ["train", str(data), "--method", "dsh", "--no-attention", "--out", str(model)])
    assert bad.exit_code != 0


def test_table3_job_calls_train_and_evaluate_with_str_paths(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # bench/table3.py passes folders as str, not the Path typer makes: a split run must still work
    from bench.table3 import Job, run_job

    threads = torch.get_num_threads()
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    data = str(write_png_folder(tmp_path / "data", num_classes=2, per_class=10, size=32))
    common = {"epochs": 1, "image_size": 32, "backbone": "efficientnet_b0", "batch_size": 8, "device": "cpu",
              "threads": 1, "classifier_input": "codes", "triplet_distance": "euclidean"}
    job = Job("brain", "dafh-8", {"data": data, "method": "dafh", "bits": 8, "split_seed": 0, **common},
              {"split_of": data, "seed": 0}, {"method": "dafh", "bits": 8})
    assert run_job(job, tmp_path / "out").startswith("brain/dafh-8: map@10=")
    metrics = json.loads((tmp_path / "out" / "brain" / "dafh-8" / "eval.json").read_text())
    assert metrics["num_queries"] == 4 and metrics["num_database"] == 16 and metrics["bits"] == 8
    commands = (tmp_path / "out" / "brain" / "dafh-8" / "command.txt").read_text()
    assert "--split-seed 0" in commands and "--classifier-input codes" in commands
    state = torch.load(tmp_path / "out" / "brain" / "dafh-8" / "model.pt", weights_only=True)
    assert state["model_kwargs"]["classifier_input"] == "codes"
    assert state["train_config"]["loss_kwargs"]["distance"] == "euclidean"
