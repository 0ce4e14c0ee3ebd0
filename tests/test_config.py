import dataclasses
from pathlib import Path

import pytest

from transfer.cli import main
from transfer.config import Config, ConfigError, dump_yaml, load_config

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))
assert CONFIGS, "no shipped configs found"  # collecting nothing must fail, not pass


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path)
    saved = tmp_path / "config.yaml"
    saved.write_text(dump_yaml(cfg))
    assert load_config(saved) == cfg


def test_shipped_arms_differ_only_in_what_the_experiment_varies():
    pretrained, scratch = load_config("configs/pretrained.yaml"), load_config("configs/scratch.yaml")
    assert pretrained.model.name == scratch.model.name == "resnet50.tv_in1k"  # the article's torchvision weights
    assert pretrained.model.pretrained and not scratch.model.pretrained
    assert pretrained.data == scratch.data
    same = lambda a, b, skip: {k for k in a.__dataclass_fields__ if k not in skip and getattr(a, k) != getattr(b, k)}
    assert same(pretrained.optim, scratch.optim, {"lr"}) == set()
    assert same(pretrained.train, scratch.train, {"freeze_epochs"}) == set()


def test_overrides_are_typed_as_yaml():
    cfg = load_config("configs/smoke.yaml", ["train.epochs=7", "optim.lr=1e-3", "data.url=null",
                                              "data.hflip=false", "optim.grad_clip=null", "train.resume=auto"])
    assert cfg.train.epochs == 7 and cfg.optim.lr == 1e-3 and cfg.data.url is None
    assert cfg.data.hflip is False and cfg.optim.grad_clip is None and cfg.train.resume == "auto"
    assert isinstance(load_config(None, ["optim.lr=1"]).optim.lr, float)


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().train.epochs = 3


@pytest.mark.parametrize("override, words", [
    ("train.epoch=3", ["unknown key 'train.epoch'", "epochs", "batch_size"]),
    ("trian.epochs=3", ["unknown key 'trian'", "train"]),
    ("train.epochs=three", ["train.epochs", "integer"]),
    ("train.epochs=true", ["train.epochs", "integer"]),
    ("train.epochs=-1", ["train.epochs", ">= 0"]),
    ("optim.lr=-0.1", ["optim.lr", "> 0"]),
    ("optim.name=lamb", ["optim.name", "adam, adamw, sgd"]),
    ("train.mixed_precision=fp8", ["train.mixed_precision", "auto, no, fp16, bf16"]),
    ("data.hflip=maybe", ["data.hflip", "true or false"]),
    ("train=3", ["train must be a section", "epochs"]),
    ("epochs", ["key=value"]),
    ("data.train_samples=0", ["data.train_samples", ">= 1"]),
    ("data.train_samples=100 data.train_per_class=5", ["data.train_samples", "null when data.train_per_class"]),
])
def test_bad_settings_name_the_key(override, words):
    with pytest.raises(ConfigError) as error:
        load_config("configs/smoke.yaml", override.split())
    message = str(error.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_cli_exits_2_with_one_line(capsys):
    assert main(["--config", "configs/smoke.yaml", "train.batchsize=4"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown key 'train.batchsize'") and err.count("\n") == 1


def test_cli_missing_config_and_bad_yaml(tmp_path, capsys):
    assert main(["--config", str(tmp_path / "nope.yaml")]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    assert main(["--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml does not exist" in err and "bad.yaml is not valid YAML" in err


def test_print_config(capsys):
    assert main(["--config", "configs/smoke.yaml", "--print-config", "train.epochs=9"]) == 0
    assert "epochs: 9" in capsys.readouterr().out


def test_probe_is_the_pretrained_arm_frozen_throughout():
    pretrained, probe = load_config("configs/pretrained.yaml"), load_config("configs/probe.yaml")
    assert probe.train.freeze_epochs == "all" and probe.train.frozen_epochs == probe.train.epochs
    assert dataclasses.replace(probe, output_dir=pretrained.output_dir,
                               train=dataclasses.replace(probe.train, freeze_epochs=pretrained.train.freeze_epochs)) \
        == pretrained


def every_key() -> set:
    from transfer.config import flatten, to_dict

    return set(flatten(to_dict(Config())))


def test_every_key_is_documented_in_the_settings_page():
    page = (Path(__file__).resolve().parents[1] / "docs" / "settings.md").read_text()
    missing = sorted(k for k in every_key() if f"`{k}`" not in page)
    assert not missing, f"docs/settings.md does not explain: {', '.join(missing)}"


def test_help_lists_every_key_with_its_default(capsys):
    import yaml

    from transfer.config import flatten

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    printed = capsys.readouterr().out
    listed = flatten(yaml.safe_load(printed.split("settings and their defaults (override any with key=value):")[1]))
    assert set(listed) == every_key()
    assert listed["train.epochs"] == Config().train.epochs and listed["optim.lr"] == Config().optim.lr


def test_the_strong_pretrained_arm_adds_layer_decay_and_nothing_else():
    pretrained, strong = load_config("configs/pretrained.yaml"), load_config("configs/pretrained_strong.yaml")
    assert strong.optim.layer_decay == 0.7
    assert dataclasses.replace(strong, output_dir=pretrained.output_dir,
                               optim=dataclasses.replace(strong.optim, layer_decay=None)) == pretrained
