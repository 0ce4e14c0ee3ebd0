"""The package's shape holds: stages import only earlier stages, every module imports on its own,
and the configs users read are the ones the package ships."""
import ast
import json
import os
import sys
from pathlib import Path

import pytest

from conftest import run_command

PACKAGE = Path(__file__).resolve().parents[1] / "transfer"

# config -> data -> training -> results -> run -> experiments -> entry points
STAGES = [{"config", "errors", "files", "records", "stops", "processes"}, {"data"}, {"training"}, {"results"}, {"run"}, {"experiments"},
          {"cli", "report", "__main__"}]


def stage(module: str) -> int:
    """`module`: a dotted name inside the package, e.g. "training.loop"."""
    top = module.split(".")[0]
    for i, names in enumerate(STAGES):
        if top in names:
            return i
    raise AssertionError(f"transfer.{module} belongs to no stage: add it to STAGES (and docs/development.md's Layout)")


def modules() -> list[str]:
    return sorted(".".join(p.relative_to(PACKAGE).with_suffix("").parts) for p in PACKAGE.rglob("*.py")
                  if p.name != "__init__.py")


def imported(module: str) -> set[str]:
    """Package modules that `module` imports, at the top or inside functions."""
    path = PACKAGE.joinpath(*module.split(".")).with_suffix(".py")
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".", 1)[1] for a in node.names if a.name.startswith("transfer.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("transfer."):
                target = node.module.split(".", 1)[1]
            else:
                continue
            if target:
                found.add(target)
            else:  # `from . import x` at the top level
                found |= {a.name for a in node.names}
    return found


def test_every_module_belongs_to_a_stage_and_imports_only_earlier_ones():
    backwards = [f"transfer.{m} imports transfer.{t}" for m in modules() for t in imported(m)
                 if stage(t) > stage(m)]
    assert not backwards, "imports must point down the pipeline: " + "; ".join(backwards)


def test_the_stage_check_sees_relative_and_function_level_imports():
    assert "training.checkpoint" in imported("run") and "results.plots" in imported("run")  # inside lr_range_test
    assert stage("experiments.plan") > stage("run") > stage("results.card") > stage("training.loop")


# Imports each module in a child forked from one interpreter that has loaded the third-party
# libraries but nothing of the package (a fresh interpreter per module took 34 s, mostly torch).
IMPORT_EACH = """
import os, sys
import numpy, torch, torchvision, timm, accelerate, datasets, scipy.stats, statsmodels.api, matplotlib, safetensors.torch
assert not [m for m in sys.modules if m == "transfer" or m.startswith("transfer.")]
failed = 0
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            __import__("transfer." + module)
        except BaseException as e:
            print(f"transfer.{module}: {type(e).__name__}: {e}", flush=True)
            os._exit(1)
        os._exit(0)
    failed += os.waitpid(pid, 0)[1] != 0
sys.exit(1 if failed else 0)
"""


@pytest.mark.slow
def test_every_module_imports_on_its_own():
    # each in a process of its own: an import that only works after another module is a hidden cycle
    names = [m for m in modules() if m != "__main__"]
    done = run_command([sys.executable, "-c", IMPORT_EACH, *names], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]


@pytest.mark.slow
def test_the_import_check_can_fail(tmp_path):
    # a module importing one that is not there, in a package laid out like ours
    (tmp_path / "transfer").mkdir()
    (tmp_path / "transfer" / "__init__.py").write_text("")
    (tmp_path / "transfer" / "bad.py").write_text("from . import missing\n")
    done = run_command([sys.executable, "-c", IMPORT_EACH, "bad"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    assert done.returncode == 1 and "transfer.bad: ImportError" in done.stdout, done.stdout + done.stderr


def test_the_configs_at_the_top_are_the_shipped_ones_stored_once():
    top = PACKAGE.parent / "configs"  # to read and copy, and for --config configs/<arm>.yaml
    assert top.is_symlink() and top.resolve() == (PACKAGE / "configs").resolve()
    assert sorted(p.name for p in top.glob("*.yaml")) == ["pretrained.yaml", "pretrained_strong.yaml", "probe.yaml",
                                                          "scratch.yaml", "scratch_strong.yaml", "smoke.yaml"]


@pytest.mark.slow
def test_a_non_editable_install_runs_from_any_folder(tmp_path, image_folder):
    # `pip install .` (no checkout on the path): the arms' configs come from the installed package
    import shutil

    repo = tmp_path / "src"  # a copy: pip builds in the source tree, and the checkout stays as it is
    top_level = {".git", "build", "runs", "data", "venv"}
    shutil.copytree(PACKAGE.parent, repo, ignore=lambda folder, names: [
        n for n in names if (Path(folder) == PACKAGE.parent and n in top_level) or n == "__pycache__"
        or n.endswith(".egg-info")])
    site = tmp_path / "site"  # installed there, and first on the path: ahead of the editable install (this
    python = sys.executable  # interpreter has torch and the rest, in a venv or not)
    run_command([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                 "--target", str(site), str(repo)], check=True, timeout=300, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    where = tmp_path / "elsewhere"
    where.mkdir()
    every = "; ".join(f"import transfer.{m}" for m in modules() if m != "__main__")
    found = run_command([python, "-c", f"import json, sys; {every}; print(json.dumps([m.__file__ for n, m in "
                                       f"sys.modules.items() if n.split('.')[0] == 'transfer']))"],
                        capture_output=True, text=True, cwd=where, env=env, timeout=120)
    files = json.loads(found.stdout)  # every module of the package, from the installed copy, none from the checkout
    assert files and all(f.startswith(str(site)) for f in files), found.stdout + found.stderr
    printed = run_command([python, "-m", "transfer.cli", "compare", "train.epochs=1"], capture_output=True, text=True,
                          cwd=where, timeout=120, env={**env, "PRINT_JOBS": "1", "ARMS": "pretrained probe",
                                                       "OUT": str(tmp_path / "cmp")})
    assert printed.returncode == 0, printed.stderr
    assert str(site / "transfer" / "configs" / "probe.yaml") in printed.stdout
    trained = run_command([python, "-m", "transfer", "--config", str(site / "transfer" / "configs" /
                                                                     "smoke.yaml"),
                           f"data.root={image_folder}", "train.epochs=1", f"output_dir={tmp_path / 'run'}"],
                          capture_output=True, text=True, cwd=where, env=env, timeout=300)
    assert trained.returncode == 0, trained.stderr[-2000:]
    assert (tmp_path / "run" / "metrics.json").is_file()


def test_every_console_command_runs_its_command():
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(PACKAGE.parent / "setup.cfg")
    scripts = dict(line.split(" = ") for line in cfg["options.entry_points"]["console_scripts"].strip().splitlines())
    from transfer.cli import COMMANDS

    assert {name.removeprefix("transfer-") for name in scripts} == set(COMMANDS)
    assert set(scripts.values()) == {"transfer.cli:console"}
    done = run_command([sys.executable, "-c", "import sys; sys.argv = ['/x/transfer-train', '--config', "
                        "'configs/smoke.yaml', '--print-config']; from transfer.cli import console; console()"],
                       capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "output_dir:" in done.stdout


def test_every_link_of_the_readme_and_the_docs_leads_somewhere():
    import re

    def slug(heading: str) -> str:  # GitHub's anchors: lower case, punctuation dropped, spaces to hyphens
        return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")

    root = PACKAGE.parent
    pages = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in {
                    slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)}:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, "\n".join(broken)
