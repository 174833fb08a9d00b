"""The command line's own behaviour: version, configs that round-trip, synth's messages."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from kelpseg import __version__
from kelpseg.cli import app
from kelpseg.config import dump_config, load_config

runner = CliRunner()


def test_version() -> None:
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output.strip() == f"kelpseg {__version__}"


def test_printed_config_reads_back_as_the_same_config(tmp_path: Path) -> None:
    for name in ("default", "demo", "tiny"):
        res = runner.invoke(app, ["config", name, "--set", "train.max_epochs=7"])
        assert res.exit_code == 0, res.output
        path = tmp_path / f"{name}.yaml"
        path.write_text(res.stdout)
        assert isinstance(yaml.safe_load(res.stdout), dict)
        back = load_config(path)
        assert back == load_config(name, ["train.max_epochs=7"])
        assert back.train.max_epochs == 7


def test_no_config_means_the_named_default() -> None:
    assert load_config(None) == load_config("default")
    res = runner.invoke(app, ["config"])
    assert res.exit_code == 0
    assert yaml.safe_load(res.stdout) == yaml.safe_load(dump_config(load_config("default")))
    assert "config: default" in res.stdout  # the printed file says which config it is


def test_stage_commands_name_the_config_they_use(tmp_path: Path) -> None:
    res = runner.invoke(app, ["stats", str(tmp_path / "nothing-here"), "-o", str(tmp_path / "o")])
    assert "config: built-in 'default'" in res.output


def test_dotted_override_adds_to_a_dict_whatever_the_config_spells_out() -> None:
    # default.yaml spells out loss: {dice: 1.0}; tiny.yaml leaves it at the field default
    for name in ("default", "tiny"):
        cfg = load_config(name, ["train.loss.bce=0.5"])
        assert cfg.train.loss == {"dice": 1.0, "bce": 0.5}, name
        assert load_config(name, ["train.loss={bce: 1.0}"]).train.loss == {"bce": 1.0}


def test_overrides_are_validated() -> None:
    for bad in ("train.max_epochs=0", "train.nope=1", "nope.key=1", "train.max_epochs"):
        res = runner.invoke(app, ["config", "tiny", "--set", bad])
        assert res.exit_code == 2, bad
        assert "config error" in res.output


def test_synth_into_an_existing_set_names_the_real_flag(tmp_path: Path) -> None:
    args = ["synth", str(tmp_path / "set"), "--aois", "1", "--size", "32"]
    assert runner.invoke(app, args).exit_code == 0
    again = runner.invoke(app, args)
    assert again.exit_code == 1
    assert "--overwrite" in again.output and "Traceback" not in again.output
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0


def test_synth_rejects_zero_aois(tmp_path: Path) -> None:
    res = runner.invoke(app, ["synth", str(tmp_path / "set"), "--aois", "0"])
    assert res.exit_code == 2
    assert "--aois" in res.output
    assert not (tmp_path / "set").exists()
