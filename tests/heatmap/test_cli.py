"""The `wsipipe heatmap` command: options, YAML config, exit codes, what it prints."""

from __future__ import annotations

import typer
from typer.testing import CliRunner

from tests.heatmap import synth
from wsipipe.heatmap.cli import heatmap_command


def _app() -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command("heatmap")(heatmap_command)

    @app.command("noop")
    def _noop() -> None:  # a second command keeps `heatmap` a named sub-command
        pass

    return app


def test_cli_runs_prints_overlays_and_exits_1_on_a_failed_slide(tmp_path):
    tile = synth.make_slide_dir(tmp_path, ("a",))
    ck = synth.make_checkpoint(tmp_path / "ck.pt")
    cfg = tmp_path / "hm.yaml"
    cfg.write_text(
        "colormap: viridis\noverlay_mpp: 2.0\noverlay_min_px: 64\npyramid: false\nworkers: 0\n"
    )
    args = [
        "heatmap", "--checkpoint", str(ck), "--stores", str(tile), "--out", str(tmp_path / "o"),
        "--config", str(cfg), "--device", "cpu", "--top-k", "5",
        "--annotations", str(tmp_path / "annotations"),
    ]  # fmt: skip
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 0, res.output
    assert "overlay/a.png" in res.output.replace("\n", "")
    assert "1 done, 0 skipped, 0 failed" in res.output
    assert "evaluation (1 slides)" in res.output
    saved = (tmp_path / "o" / "config.yaml").read_text()
    assert "colormap: viridis" in saved and "top_k: 5" in saved and "pyramid: false" in saved
    assert not (tmp_path / "o" / "pyramid").exists()

    (tile / "stores" / "broken.h5").write_bytes(b"garbage")
    res = CliRunner().invoke(_app(), args)
    assert res.exit_code == 1
    assert "1 skipped, 1 failed" in res.output

    res = CliRunner().invoke(_app(), [*args, "--normalise", "zscore"])
    assert (
        res.exit_code == 2 and "'zscore' is not one of" in res.output and "normalise" in res.output
    )


def test_every_config_field_is_an_option():
    import dataclasses
    import inspect

    from wsipipe.heatmap.config import HeatmapConfig

    params = set(inspect.signature(heatmap_command).parameters)
    fields = {f.name for f in dataclasses.fields(HeatmapConfig)}
    assert fields <= params and params - fields == {"config", "overwrite"}
