"""scripts/demo.sh, shortened (fewer images and epochs; the same script and steps): every step runs,
offline, the report exists and the headline is printed; a rerun reuses what is finished."""
import json
import os
import sys

import pytest

from conftest import run_command


@pytest.mark.slow
def test_shortened_demo_runs_every_step_and_reuses_them(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "SOURCE_IMAGES": "8", "SOURCE_EPOCHS": "1",
           "EPOCHS": "1", "PER_CLASS": "2", "SEEDS": "0 1", "JOBS": "2"}
    result = run_command(["scripts/demo.sh"], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    for step in ("== 1/3 generating", "== 2/3 training resnet10t on the source task", "== 3/3 pretrained vs scratch"):
        assert step in result.stdout
    assert sorted(p.name for p in (out / "data" / "source" / "train").iterdir()) == [
        "circle", "cross", "ring", "square", "star", "triangle"]
    assert (out / "source" / "model" / "model.safetensors").is_file()
    summary = json.loads((out / "compare" / "summary.json").read_text())
    assert summary["arms"]["pretrained"]["seeds"] == summary["arms"]["scratch"]["seeds"] == 2
    config = json.loads((out / "compare" / "pretrained" / "seed0" / "metrics.json").read_text())
    assert config["train_samples"] == 12  # 2 labelled images for each of the 6 target shapes
    log = (out / "compare" / "pretrained" / "seed0" / "train.log").read_text()
    assert "fresh classifier: the weights were trained on other labels" in log  # the source head is not reused
    # 2 seeds (the demo runs 3 by default): each seed's interval over its images, and no bare 95% CI
    assert "gain of pretraining" in result.stdout and "with 2 seeds: per seed" in result.stdout
    assert "(95% CI " not in result.stdout
    assert "(95% intervals over the 150 images alone" in result.stdout and (out / "compare" / "report.md").is_file()
    assert f"report: {out / 'compare' / 'report.md'}" in result.stdout

    again = run_command(["scripts/demo.sh"], capture_output=True, text=True, env=env, timeout=900)
    assert again.returncode == 0 and "the source model is trained; reusing it" in again.stdout
    assert again.stdout.count("reusing it (OVERWRITE=1 to retrain)") == 4
