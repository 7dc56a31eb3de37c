"""What it shows is what it did: one colour scale per metric, the heatmap's native grid, complete
rerun lines, notes once and silenced, no silent fallback from a named data root, listings that fit
100 columns."""
from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from bench.cli import main
from bench.explain.cams import native_grid
from bench.report.figures import color_range

from test_explain import _fake

ROOT = Path(__file__).resolve().parents[1]


def test_heatmap_colours_span_the_metric_not_the_cells():
    close = SimpleNamespace(metric="auc", summary=pd.DataFrame({"mean": [0.679, 0.745]}))
    assert color_range(close) == (0.5, 1.0)  # 0.679 vs 0.745 is not purple vs yellow
    # a metric without a fixed range: one scale over every cell of the report, whatever the section
    ece = SimpleNamespace(metric="ece", summary=pd.DataFrame({"mean": [0.02, 0.31, np.nan, 0.11]}))
    assert color_range(ece) == (0.02, 0.31)


@pytest.mark.parametrize("name,size,grid", [("resnet18", 64, (2, 2)), ("deit", 32, (2, 2)), ("dummy", 32, None)])
def test_explain_states_the_maps_native_grid(name, size, grid):
    rb = _fake(name)
    got = native_grid(rb, torch.randn(1, 3, size, size))
    assert got == (grid or got) and all(g >= 1 for g in got)
    assert got[0] <= size


def test_rerun_lines_carry_the_folders(tmp_path):
    from bench.explain.model import rerun_command
    from bench.resolve import resolve
    from bench.run_config import make_run_options

    cfg = resolve("dummy", "breastmnist", head="linear")
    opts = make_run_options(results_dir=tmp_path / "res", data_root=tmp_path / "data")
    argv = shlex.split(rerun_command(cfg, "--force", opts=opts))
    assert argv[argv.index("--results-dir") + 1] == str(tmp_path / "res")
    assert argv[argv.index("--data-root") + 1] == str(tmp_path / "data")


def test_a_named_data_root_without_the_file_is_an_error_not_the_shipped_copy(tmp_path, capsys):
    empty = tmp_path / "typo"
    empty.mkdir()
    results = tmp_path / "res"
    code = main(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(empty),
                 "--results-dir", str(results), "--device", "cpu", "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "breastmnist.npz is not in" in err and "--data-root" in err
    assert not results.exists() or not any((results / "runs").glob("*.csv"))


def _bench(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "bench.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)


def test_the_shipped_copy_note_is_silenced_by_quiet(tmp_path):
    home = tmp_path / "empty-default-root"
    common = ["run", "--backbone", "dummy", "--dataset", "breastmnist", "--results-dir", str(tmp_path / "r"),
              "--device", "cpu", "--head-epochs", "1"]
    env = {"MEDMNIST_ROOT": str(home), "HOME": str(tmp_path)}  # the default root holds nothing
    loud = _bench(*common, env_extra=env)
    assert loud.returncode == 0, loud.stderr[-2000:]
    assert loud.stderr.count("using the copy shipped with medfm-bench") == 1  # once per process
    quiet = _bench(*common, "--force", "-q", env_extra=env)
    assert quiet.returncode == 0 and "shipped" not in quiet.stderr


@pytest.mark.parametrize("what", ["datasets", "backbones", "protocols", "options", "recipes"])
def test_listings_fit_100_columns_unless_wide(what, capsys):
    assert main(["ls", what]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and max(map(len, lines)) <= 100, max(lines, key=len)
    assert main(["ls", what, "--wide"]) == 0
    wide = capsys.readouterr().out.splitlines()
    if what != "protocols":
        assert max(map(len, wide)) > 100


def test_one_label_style_names_lora_and_random_weights_everywhere():
    from bench.labels import protocol_label, run_label
    from bench.report.tables import SectionKey, section_title
    from bench.resolve import resolve

    assert protocol_label("mlp", "last2", "lora") == "mlp head, last 2 blocks fine-tuned with LoRA"
    assert protocol_label("linear", "none", "none") == "linear head, frozen backbone"
    sec = SectionKey("mlp", "last2", 28, None, "resize", "", "lora")
    assert section_title(sec).startswith("mlp head, last 2 blocks fine-tuned with LoRA") and "lora" in sec.slug
    # bench explain and the CLI name a run as the report does
    cfg = resolve("deit", "breastmnist", variant="small", weights="random", head="mlp", unfreeze="last2", adapt="bitfit")
    assert run_label(cfg) == "deit small (random) · mlp head, last 2 blocks fine-tuned with BitFit"
    assert run_label(resolve("dummy", "breastmnist")) == "dummy (random) (test model) · linear head, frozen backbone"


def test_random_weight_runs_carry_the_random_init_note(tmp_path, data_root, capsys):
    from bench.labels import RANDOM_INIT_NOTE
    from bench.report import make_report

    results = tmp_path / "res"
    for extra in ([], ["--layers", "all"]):
        assert main(["run", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root),
                     "--skip-md5", "--results-dir", str(results), "--device", "cpu", "-q", "--head-epochs", "2",
                     *extra]) == 0
    capsys.readouterr()
    out = make_report(results, tmp_path / "rep", formats=["md"])
    md = Path(out).read_text() if Path(out).is_file() else (tmp_path / "rep" / "report.md").read_text()
    # in the overview, and again under the depth section, whose repeated numbers it explains
    assert md.count(RANDOM_INIT_NOTE) == 2
