"""compare.sh's environment is a config of its own: read strictly, one line and exit 2 when it is
wrong; GPUS gives each concurrent run its own GPU; OVERWRITE=1 retrains. A stand-in launcher
(LAUNCH) records what each run was given, so nothing trains here."""
import json
import os
import sys
import textwrap

import pytest

from conftest import run_command
from transfer.errors import ConfigError
from transfer.experiments.spec import CompareSpec
WORDS = {"1": True, "true": True, "YES": True, "0": False, "false": False, "No": False, "": False}


@pytest.mark.parametrize("text, expected", WORDS.items())
def test_booleans_read_like_settings(text, expected):
    spec = CompareSpec.from_environ({"PRINT_JOBS": text, "OVERWRITE": text}, sys.executable)
    assert spec.print_jobs is expected and spec.overwrite is expected


@pytest.mark.parametrize("name, value, says", [("PRINT_JOBS", "maybe", "PRINT_JOBS='maybe'"),
                                               ("OVERWRITE", "2", "OVERWRITE='2'"),
                                               ("JOBS", "two", "JOBS='two'"), ("SEEDS", "0 0", "repeats a seed"),
                                               ("ARMS", "pretrained finetuned", "unknown arm 'finetuned'"),
                                               ("SWEEP", "train.epochs", "not of the form key=v1,v2")])
def test_a_bad_variable_is_named(name, value, says):
    with pytest.raises(ConfigError, match=says.replace("(", r"\(").replace("?", r"\?")):
        CompareSpec.from_environ({name: value}, sys.executable)


def compare_sh(tmp_path, *args, **env):
    return run_command(["scripts/compare.sh", *args], capture_output=True, text=True, timeout=120,
                         
                          env={**os.environ, "OUT": str(tmp_path / "out"), "PYTHON": sys.executable, **env})


def test_a_bad_compare_sh_variable_is_one_line_and_exit_2(tmp_path):
    result = compare_sh(tmp_path, PRINT_JOBS="maybe")
    assert result.returncode == 2 and result.stdout == "", result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: PRINT_JOBS='maybe' is invalid")
    assert not (tmp_path / "out").exists()


def test_print_jobs_true_prints_and_runs_nothing(tmp_path):
    result = compare_sh(tmp_path, "train.epochs=1", PRINT_JOBS="true", SEEDS="0 1")
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0 and len(lines) == 4, result.stderr
    assert all("-m transfer --config" in line and "train.epochs=1" in line for line in lines)
    assert not (tmp_path / "out").exists()  # printed, not run


@pytest.fixture
def recording_launcher(tmp_path):
    """A LAUNCH that records each run's GPU and when it ran, then fails (no metrics.json)."""
    script = tmp_path / "launch.py"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        out = [a.split("=", 1)[1] for a in sys.argv if a.startswith("output_dir=")][0]
        start = time.time()
        time.sleep(0.5)
        with open({str(tmp_path / "calls.jsonl")!r}, "a") as f:
            f.write(json.dumps({{"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "out": out,
                                 "threads": os.environ.get("OMP_NUM_THREADS"),
                                 "start": start, "end": time.time()}}) + "\\n")
        print("error: stand-in launcher")
        sys.exit(1)
    """))
    return f"{sys.executable} {script}", tmp_path / "calls.jsonl"


@pytest.mark.slow
def test_gpus_gives_each_concurrent_run_its_own_gpu(tmp_path, recording_launcher):
    launch, calls = recording_launcher
    # inside an allocation of devices 3 and 7 (SLURM sets CUDA_VISIBLE_DEVICES so): GPUS counts within it
    result = compare_sh(tmp_path, "train.epochs=1", GPUS="0 1", SEEDS="0 1 2 3", LAUNCH=launch,
                        CUDA_VISIBLE_DEVICES="3,7", OMP_NUM_THREADS="")
    assert result.returncode == 1 and "8 of 8 runs failed" in result.stderr, result.stderr  # 2 arms x 4 seeds
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert len(runs) == 8 and {r["gpu"] for r in runs} == {"3", "7"}
    cores = len(os.sched_getaffinity(0))
    assert {r["threads"] for r in runs} == {str(max(1, cores // 2))}  # the cores shared out between two runs
    for a in runs:
        overlapping = [b for b in runs if b is not a and b["start"] < a["end"] and a["start"] < b["end"]]
        assert overlapping and all(b["gpu"] != a["gpu"] for b in overlapping)  # two at a time, never on one GPU


FAKE_MPS = """#!/bin/sh
# nvidia-cuda-mps-control as the runner uses it: -f runs the daemon (its control pipe appears), a client
# reads "quit" on stdin and ends it; each call recorded
echo "$* pipe=$CUDA_MPS_PIPE_DIRECTORY" >> {log}
if [ "$1" = -f ]; then
  touch "$CUDA_MPS_PIPE_DIRECTORY/control"
  while [ ! -f "$CUDA_MPS_PIPE_DIRECTORY/quit" ]; do sleep 0.1; done
  echo "daemon ended" >> {log}
else
  read command; [ "$command" = quit ] && touch "$CUDA_MPS_PIPE_DIRECTORY/quit"
fi
"""


@pytest.mark.slow
def test_several_runs_share_each_gpu_through_mps_with_the_cores_shared_out(tmp_path):
    script, calls, log = tmp_path / "launch.py", tmp_path / "calls.jsonl", tmp_path / "mps.log"
    script.write_text(textwrap.dedent(f"""
        import json, os, sys, time
        start = time.time()
        time.sleep(1.0)
        with open({str(calls)!r}, "a") as f:
            f.write(json.dumps({{"gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "args": sys.argv[1:],
                                 "pipe": os.environ.get("CUDA_MPS_PIPE_DIRECTORY"), "start": start,
                                 "end": time.time()}}) + "\\n")
        sys.exit(1)
    """))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-cuda-mps-control").write_text(FAKE_MPS.format(log=log))
    (bin_dir / "nvidia-cuda-mps-control").chmod(0o755)
    result = compare_sh(tmp_path, "train.epochs=1", GPUS="0", RUNS_PER_GPU="2", SEEDS="0 1",
                        LAUNCH=f"{sys.executable} {script}", PATH=f"{bin_dir}:{os.environ['PATH']}",
                        OMP_NUM_THREADS="", CUDA_VISIBLE_DEVICES="5")
    assert result.returncode == 1 and "4 of 4 runs failed" in result.stderr, result.stderr
    assert "the runs on each GPU share it through MPS" in result.stderr
    runs = [json.loads(line) for line in calls.read_text().splitlines()]
    assert {r["gpu"] for r in runs} == {"5"} and len({r["pipe"] for r in runs}) == 1 and runs[0]["pipe"]
    assert all(any(b is not a and b["start"] < a["end"] and a["start"] < b["end"] for b in runs) for a in runs)
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert all(r["args"][-1] == f"data.num_workers={share}" for r in runs)  # (the configs ask for 4)
    said = log.read_text().splitlines()
    assert said[0].startswith("-f pipe=") and " pipe=" in said[1] and said[-1] == "daemon ended"  # quit at the end
    assert not os.path.exists(runs[0]["pipe"])  # its folder removed


def test_runs_per_gpu_needs_gpus_and_says_when_mps_is_not_there(monkeypatch):
    from transfer.experiments import runner

    with pytest.raises(ConfigError, match="RUNS_PER_GPU=2 places runs on the GPUs that GPUS names; add GPUS"):
        CompareSpec.from_environ({"RUNS_PER_GPU": "2"}, sys.executable)
    with pytest.raises(ConfigError, match="RUNS_PER_GPU='0' is invalid"):
        CompareSpec.from_environ({"RUNS_PER_GPU": "0", "GPUS": "0"}, sys.executable)
    assert CompareSpec.from_environ({"RUNS_PER_GPU": "3", "GPUS": "0"}, sys.executable).runs_per_gpu == 3
    monkeypatch.delenv("CUDA_MPS_PIPE_DIRECTORY", raising=False)
    monkeypatch.setattr(runner.shutil, "which", lambda name: None)
    said = []
    with runner.mps(2, said.append) as env:
        assert env == {}
    assert said == ["note: RUNS_PER_GPU=2: MPS is not available here (nvidia-cuda-mps-control not found), so the "
                    "runs on each GPU take turns on it (time slicing)"]


@pytest.mark.slow
def test_overwrite_retrains_a_finished_run(tmp_path, recording_launcher):
    launch, calls = recording_launcher
    finished = tmp_path / "out" / "scratch"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    kept = compare_sh(tmp_path, "train.epochs=1", ARMS="scratch", LAUNCH=launch)
    assert "reusing it" in kept.stdout and not calls.exists()  # finished: not run again
    again = compare_sh(tmp_path, "train.epochs=1", ARMS="scratch", LAUNCH=launch, OVERWRITE="1")
    assert "OVERWRITE=1, training it again" in again.stdout and len(calls.read_text().splitlines()) == 1
    assert not (finished / "metrics.json").exists()  # the old result is gone; the new run failed


def test_all_four_arms_plan_from_their_shipped_configs_with_three_seeds_by_default(tmp_path):
    from transfer.experiments.plan import plan

    spec = CompareSpec.from_environ({"OUT": str(tmp_path / "out"),  # SEEDS unset: the default, three seeds
                                     "ARMS": "pretrained pretrained_strong scratch scratch_strong"}, sys.executable)
    jobs = plan(spec.bases(), list(spec.arms), list(spec.seeds), ["train.epochs=1"])
    assert spec.seeds == (0, 1, 2) and len(jobs) == 12
    for job in jobs:
        assert job.args[1].endswith(f"configs/{job.arm}.yaml")
        assert job.folder == tmp_path / "out" / job.arm / f"seed{job.seed}" and job.settings["train"]["seed"] == job.seed
    once = CompareSpec.from_environ({"SEEDS": "", "ARMS": "scratch"}, sys.executable)  # set but empty: the config's
    assert once.seeds == () and [j.seed for j in plan(once.bases(), ["scratch"], [], [])] == [None]



def test_gpus_count_within_the_visible_devices_and_each_run_gets_one_process():
    from transfer.experiments.spec import accelerate_processes, visible_gpus

    assert visible_gpus({"GPUS": "0 1"}) == ("0", "1")  # nothing inherited: the host's numbering
    assert visible_gpus({"GPUS": "1 0", "CUDA_VISIBLE_DEVICES": "4,5"}) == ("5", "4")
    with pytest.raises(ConfigError, match="names device 2, but CUDA_VISIBLE_DEVICES='4,5' makes 2 visible"):
        visible_gpus({"GPUS": "0 2", "CUDA_VISIBLE_DEVICES": "4,5"})
    with pytest.raises(ConfigError, match="expected distinct device numbers"):
        visible_gpus({"GPUS": "0 0"})
    spec = CompareSpec.from_environ({"GPUS": "0", "PYTHON": "py"}, sys.executable)
    assert spec.launch == ("py", "-m", "accelerate.commands.launch", "--quiet", "--num_processes", "1")  # never N ranks on one GPU
    assert accelerate_processes(("torchrun",), 1) == ("torchrun",)  # another launcher is the user's to set


def test_concurrent_runs_share_the_cores_unless_the_user_set_the_threads(monkeypatch):
    from transfer.experiments.runner import threads_per_run

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert threads_per_run(2, {}) == 4 and threads_per_run(3, {"OMP_NUM_THREADS": ""}) == 2
    assert threads_per_run(16, {}) == 1  # at least one
    assert threads_per_run(1, {}) is None  # one run at a time: torch's own choice
    assert threads_per_run(4, {"OMP_NUM_THREADS": "3"}) is None  # the user's
