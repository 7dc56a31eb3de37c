"""Every number is of what it says: test models are not real ones, definitions carry versions that
enter the run id only when bumped, own data is named by content not path, and the Python API's
names work in any order in one process."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path



import backbones
from bench.cli import main
from bench.protocols import PROTOCOLS
from bench.resolve import definition_versions, resolve

from test_own_data import write_folder

ROOT = Path(__file__).resolve().parents[1]


def _ids(results: Path) -> set[str]:
    return {p.stem for p in (results / "runs").glob("*.csv")}


# -- item 1: test models ----------------------------------------------------------------------------

def test_real_families_hide_their_test_variant_outside_the_tests(monkeypatch, capsys):
    monkeypatch.delenv("BENCH_TEST_MODELS", raising=False)
    assert main(["ls", "backbones", "--wide"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
    for name in ("deit", "dino", "dinov2", "clip", "blip", "biomedclip", "medsam"):
        variants = rows[name].split()[2:4]
        assert "tiny" not in ",".join(variants).split(","), rows[name]
    assert "(test model)" in rows["dummy"]
    code = main(["run", "--backbone", "deit", "--variant", "tiny", "--dataset", "breastmnist", "--dry-run"])
    err = capsys.readouterr().err
    assert code == 2 and "random-init test model" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("BENCH_TEST_MODELS", "1")  # the tests' switch builds it
    assert resolve("deit", "breastmnist", variant="tiny").variant == "tiny"


def test_a_test_model_is_labelled_and_never_the_default_reference(tmp_path, data_root, capsys):
    from bench.report.load import load_results as load_runs
    from bench.report.tables import default_baseline

    results = tmp_path / "res"
    for backbone, variant in (("deit", "tiny"), ("dummy", "tiny")):
        assert main(["run", "--backbone", backbone, "--variant", variant, "--dataset", "breastmnist",
                     "--data-root", str(data_root), "--skip-md5", "--results-dir", str(results), "-q",
                     "--device", "cpu", "--input-size", "32", "--head-epochs", "2"]) == 0
    rs = load_runs(results)
    labels = set(rs.runs.model)
    assert labels == {"deit tiny (random) (test model)", "dummy (random) (test model)"}, labels
    assert default_baseline(rs) is None  # deit is an ImageNet reference, but not its test model


# -- item 6: versioned definitions ------------------------------------------------------------------

def test_unbumped_definitions_keep_their_ids_and_are_recorded(tmp_path, data_root, capsys):
    cfg = resolve("dummy", "breastmnist")
    assert cfg.definitions == "" and "definitions" not in cfg.id_dict()
    assert definition_versions(cfg) == {"backbone": "dummy@tiny:1", "protocol": "probe:1", "recipe": "medfm:1",
                                        "dataset": "medmnist:1"}


def test_a_bumped_definition_reruns_and_keeps_the_old_files(tmp_path, data_root, capsys, monkeypatch):
    results = tmp_path / "res"
    args = ["run", "--backbone", "dummy", "--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5",
            "--results-dir", str(results), "-q", "--device", "cpu", "--head-epochs", "2"]
    assert main(args) == 0
    (old,) = _ids(results)
    old_files = {p: p.read_bytes() for p in results.rglob("*") if p.is_file() and old in p.name}
    spec = backbones.get("dummy").spec
    monkeypatch.setitem(spec.versions, "tiny", 2)  # e.g. its architecture changed
    cfg = resolve("dummy", "breastmnist")
    assert cfg.definitions == "backbone:dummy@tiny=2" and cfg.run_id != old
    capsys.readouterr()
    assert main(args) == 0
    assert "already done" not in capsys.readouterr().err  # the old result is not this definition's
    new = (_ids(results) - {old}).pop()
    meta = json.loads((results / "meta" / f"{new}.json").read_text())
    assert meta["definitions"]["backbone"] == "dummy@tiny:2" and meta["config"]["definitions"] == "backbone:dummy@tiny=2"
    assert all(p.read_bytes() == b for p, b in old_files.items())  # the old run stays as it was
    # the report does not merge the two as seeds of one model, and says so in one line
    from bench.report.load import load_results as load_runs

    rs = load_runs(results)
    err = capsys.readouterr().err
    assert list(rs.runs.run_id) == [new] and "left out 1 run(s) made before a definition changed" in err
    # the export lists every run, each with the definitions it ran with, as bench.load_results does
    import bench
    from bench.report.export import tidy_table

    table = tidy_table(results)
    assert set(table.run_id) == {old, new} == set(bench.load_results(results).run_id)
    assert set(table.drop_duplicates("run_id").definitions) == {"", "backbone:dummy@tiny=2"}


def test_protocols_and_recipes_carry_versions():
    assert all(p.version == 1 for p in PROTOCOLS.all())
    from bench import recipes

    assert all(r.version == 1 for r in recipes.RECIPES.values())


# -- item 7: own data named by content ---------------------------------------------------------------

def _folder_id(folder: Path, results: Path, capsys) -> str:
    assert main(["run", "--backbone", "dummy", "--dataset", f"folder:{folder}", "--results-dir", str(results),
                 "-q", "--device", "cpu", "--head-epochs", "2", "--size", "28"]) == 0
    capsys.readouterr()
    (rid,) = _ids(results)
    return rid


def test_moving_own_data_keeps_its_run_id(tmp_path, capsys):
    a = tmp_path / "first" / "xray"
    write_folder(a, n=12)
    rid = _folder_id(a, tmp_path / "r1", capsys)
    assert "first" not in rid and rid.startswith("dummy-folder_xray_28-")
    b = tmp_path / "elsewhere" / "deeper" / "xray"
    b.parent.mkdir(parents=True)
    os.rename(a, b)
    assert _folder_id(b, tmp_path / "r2", capsys) == rid  # same name, same content: same run
    meta = json.loads((tmp_path / "r2" / "meta" / f"{rid}.json").read_text())
    assert meta["config"]["definitions"] == "dataset:folder=2"


# -- item 4: the Python API in any order -------------------------------------------------------------

def test_api_names_work_in_any_order_in_one_process(tmp_path, data_root):
    code = f"""
import bench
r = bench.run(backbone="dummy", dataset="breastmnist", data_root={str(data_root)!r}, skip_md5=True,
              results_dir={str(tmp_path / 'res')!r}, device="cpu", quiet=True, head_epochs=2)
cfg = bench.config("dummy", "breastmnist")
assert cfg.backbone == "dummy" and r.run_id
for _ in range(2):  # bench.report and bench.sweep are subpackages too: the functions must stay
    bench.report({str(tmp_path / 'res')!r}, out={str(tmp_path / 'rep')!r}, formats=["md"])
    assert bench.sweep({str(ROOT / 'configs' / 'smoke.yaml')!r}, dry_run=True) == 0
import bench.report.load, bench.sweep.plan  # importing the subpackages by name still works
from bench.report import make_report
print(type(bench.config).__name__, type(bench.report).__name__, type(bench.sweep).__name__,
      len(bench.load_results({str(tmp_path / 'res')!r})) > 0)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-4:] == ["function", "function", "function", "True"]
