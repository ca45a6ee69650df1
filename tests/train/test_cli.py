"""The typer commands: options, precedence, a run, predict, eval-only, exit status 2."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from tests.train.synthstores import cli_args, make_cohort, tiny_overrides
from wsipipe.errors import ConfigError
from wsipipe.train.cli import embed_command, predict_command, train_command


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command("train")(train_command)
    app.command("predict")(predict_command)
    app.command("embed")(embed_command)
    return app


def test_help_lists_every_option() -> None:
    res = CliRunner().invoke(_app(), ["train", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0
    for opt in (
        "--M",
        "--I",
        "--S",
        "--method",
        "--drop-ratio",
        "--encoder",
        "--pretrained",
        "--dim-head",
        "--batch-size",
        "--warmup-epochs",
        "--precision",
        "--grad-checkpointing",
        "--workers",
        "--resume",
        "--eval-only",
        "--fold",
    ):
        assert opt in res.output, opt


def test_train_predict_eval_only_via_cli(tmp_path: Path) -> None:
    labels, _ = make_cohort(tmp_path, n_train=4, n_val=4, n_tiles=(8, 16))
    cfg_yaml = tmp_path / "cfg.yaml"
    cfg_yaml.write_text("epochs: 3\nmethod: dbps\nM: 99\n")  # CLI --M wins over the YAML
    run = tmp_path / "run"
    ov = tiny_overrides(labels=str(labels), stores=str(tmp_path), out=str(run), epochs=None)
    ov = {k: v for k, v in ov.items() if v is not None}
    app = _app()
    res = CliRunner().invoke(app, ["train", "--config", str(cfg_yaml), *cli_args(ov)])
    assert res.exit_code == 0, res.output
    saved = (run / "config.yaml").read_text()
    assert "method: dbps" in saved and "M: 8" in saved and "epochs: 3" in saved
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 3
    res = CliRunner().invoke(
        app,
        [
            "predict",
            "--checkpoint",
            str(run / "checkpoints/best.pt"),
            "--out",
            str(tmp_path / "pred"),
            "--stores",
            str(tmp_path),
            "--labels",
            str(labels),
            "--split",
            "val",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "auc" in res.output
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == 4
    res = CliRunner().invoke(
        app,
        [
            "train",
            "--eval-only",
            "--out",
            str(run),
            "--labels",
            str(labels),
            "--stores",
            str(tmp_path),
            "--eval-split",
            "train",
            "--workers",
            "0",
        ],
    )
    assert res.exit_code == 0, res.output
    metrics = json.loads((run / "eval" / "train" / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["split"] == "train"


def test_errors_propagate_as_config_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(
        _app(),
        [
            "train",
            "--labels",
            str(tmp_path / "none.csv"),
            "--stores",
            str(tmp_path),
            "--device",
            "cpu",
        ],
    )
    assert isinstance(res.exception, ConfigError)


def test_python_m_wsipipe_train_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from wsipipe.train.__main__ import main

    monkeypatch.setattr(
        sys,
        "argv",
        ["wsipipe.train", "--labels", str(tmp_path / "x.csv"), "--stores", str(tmp_path)],
    )
    with pytest.raises(SystemExit) as ex:
        main()
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "x.csv" in err and "\n" not in err
