"""The seams: options declared once, protocol and dataset-source registries, the Python API and
the results layout. A toy protocol and a toy dataset source are registered at run time and run
through `bench run` and `bench sweep` like built-ins."""
from __future__ import annotations

import argparse
import dataclasses
import json
import re
from glob import glob
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import bench
from bench import docgen, options
from bench.cli import build_parser, main
from bench.run_config import RunConfig, RunOptions
from bench.datasets import SOURCES, Dataset, DatasetSource, Split, register_source
from bench.errors import UserError
from bench.protocols import PROTOCOLS, Protocol, ProtocolOutput, register_protocol
from bench.protocols.probe import probe_shares
from bench.resolve import resolve

CLI_DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"  # the option table's page


def common(data_root: Path, results: Path) -> list[str]:
    return ["--data-root", str(data_root), "--skip-md5", "--results-dir", str(results), "-q"]


# --- options: one declaration, everything derived ---------------------------------------------

def test_run_ids_are_unchanged_by_the_refactor():
    # computed with the code before the option table existed (git eee886f)
    before = [
        ({}, "dummy-breastmnist_28-linear-none-s0-e5c52cafe3"),
        ({"dataset": "retinamnist", "head": "knn", "seed": 1}, "dummy-retinamnist_28-knn-none-s1-27156d00f9"),
        ({"backbone": "resnet18", "unfreeze": "last2", "size": 64}, "resnet18-breastmnist_64-linear-last2-s0-bc00e1366a"),
        ({"dataset": "pathmnist", "head": "deit"}, "dummy-pathmnist_28-deit-none-s0-820c690a8c"),
        ({"head": "mlp", "unfreeze": "all", "lr": 1e-3, "epochs": 5, "augment": "light"},
         "dummy-breastmnist_28-mlp-all-s0-191f034be7"),
        ({"dataset": "chestmnist", "head_epochs": 10, "limit": 32, "resize": "pad", "input_size": 64},
         "dummy-chestmnist_28-linear-none-s0-e2300da4e0"),
    ]
    for given, run_id in before:
        kw = {"backbone": "dummy", "dataset": "breastmnist", **given}
        assert resolve(kw.pop("backbone"), kw.pop("dataset"), **kw).run_id == run_id, given


def test_records_are_derived_from_the_option_table():
    run_fields = {f.name for f in dataclasses.fields(RunConfig)}
    assert run_fields == set(options.names("run")) | {"weights_fingerprint", "data_fingerprint", "definitions"}
    assert {f.name for f in dataclasses.fields(RunOptions)} == set(options.names("exec"))
    for o in options.OPTIONS:
        if o.scope == "exec":
            assert getattr(RunOptions(), o.name) == o.default, o.name
        elif not o.required:
            assert getattr(RunConfig(backbone="x", dataset="y"), o.name) == (None if o.per_protocol else o.default)


def test_every_option_is_a_flag_of_run_and_sweep_with_its_choices_in_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for cmd in ("run", "sweep"):
        dests = {a.dest for a in sub.choices[cmd]._actions}
        wanted = {o.name for o in options.OPTIONS if cmd == "run" or o.sweepable}
        assert wanted <= dests, (cmd, wanted - dests)
    text = " ".join(sub.choices["run"].format_help().split())  # argparse wraps lines
    assert " | ".join(options.get("resize").choices) in text and "default 30" in text  # choices, a default
    assert re.search(r"linear \| knn \| mlp \| deit", text)  # heads come from the protocol registry


def test_docs_option_table_is_the_generated_one():
    assert docgen.block("options") == docgen.option_table(), "docs/cli.md: regenerate with python -m bench.docgen --write"


def test_sweep_yaml_values_are_typed_by_the_same_table(tmp_path):
    from bench.sweep.grid import from_mapping

    g = from_mapping({"backbones": ["dummy"], "datasets": ["breastmnist"], "lr": "1e-4", "epochs": 3.0,
                      "head": "mlp"})
    (point,) = g.points()
    assert point["lr"] == 1e-4 and isinstance(point["epochs"], int)
    with pytest.raises(UserError, match="epochs: 2.5 is not a valid int"):
        from_mapping({"epochs": 2.5})
    with pytest.raises(UserError, match="--lr -1.0: must be a finite number greater than 0"):
        resolve("dummy", "breastmnist", head="mlp", lr=-1.0)


def test_options_a_protocol_does_not_read_stay_none():
    knn = resolve("dummy", "breastmnist", head="knn", epochs=99, head_epochs=7)
    assert knn.knn_k == 11 and knn.epochs is None and knn.head_epochs is None
    assert knn.run_id == resolve("dummy", "breastmnist", head="knn").run_id
    deit = resolve("dummy", "breastmnist", head="deit")
    assert deit.head_arch == "deit_small" and deit.epochs == 30 and deit.knn_k is None
    assert resolve("dummy", "breastmnist", head="mlp").head_arch is None


# --- a toy protocol and a toy dataset source through bench run and bench sweep -----------------

class MajorityClass(Protocol):
    """Predicts the train split's class frequencies for every image (a chance-level baseline)."""

    name = "majority"
    heads = ("majority",)
    kind = "probe"

    def applies(self, cfg) -> bool:
        return cfg.unfreeze == "none"

    def shares(self, cfg) -> tuple:
        return probe_shares(cfg)

    def run(self, ctx) -> ProtocolOutput:
        ds = ctx.dataset
        prior = np.bincount(ds.targets("train"), minlength=ds.n_outputs) / len(ds.splits["train"])
        prior = prior.astype(np.float32)
        return ProtocolOutput(np.tile(prior, (len(ds.splits["val"]), 1)), np.tile(prior, (len(ds.splits["test"]), 1)),
                              {"head": "majority", "prior": prior.round(3).tolist()})


class Stripes(DatasetSource):
    """``stripes:N``: N images per split, label = which half carries a bright stripe."""

    name = "stripes"
    description = "synthetic stripes, stripes:N images per split"

    def load(self, dataset, size, opts) -> Dataset:
        n = int(dataset.split(":", 1)[1])
        rng = np.random.default_rng(0)
        splits = {}
        for s in ("train", "val", "test"):
            y = np.arange(n) % 2
            x = rng.integers(0, 60, (n, size, size), dtype=np.uint8)
            for i, c in enumerate(y):
                x[i, c * size // 2:(c + 1) * size // 2] += 150
            splits[s] = Split(x[: opts.limit], y[: opts.limit, None].astype(np.int64))
        return Dataset(dataset, size, "binary-class", {"0": "top", "1": "bottom"}, 1, splits,
                       fingerprint=f"stripes-{n}-{size}", modality="synthetic", source=self.name)

    def n_classes(self, dataset) -> int:
        return 2


@pytest.fixture
def toys():
    register_protocol(MajorityClass())
    register_source(Stripes())
    yield
    PROTOCOLS.unregister("majority")
    SOURCES.unregister("stripes")


def test_toy_protocol_and_source_through_bench_run(toys, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "--backbone", "dummy", "--weights", "random", "--dataset", "stripes:40",
                 "--head", "majority", "--results-dir", str(out), "-q"]) == 0, capsys.readouterr().err
    assert main(["run", "--backbone", "dummy", "--weights", "random", "--dataset", "stripes:40",
                 "--results-dir", str(out), "-q", "--head-epochs", "20"]) == 0, capsys.readouterr().err
    df = bench.load_results(out)
    acc = df[(df.split == "test") & (df.metric == "acc")].set_index("head")["value"]
    assert acc["majority"] == pytest.approx(0.5)  # balanced classes: the prior is chance
    assert acc["linear"] > 0.9  # the stripe is learnable: the dataset really reached the probe
    meta = json.loads(next((out / "meta").glob("dummy-stripes_40_28-majority-*.json")).read_text())
    assert meta["protocol"] == "majority" and meta["dataset"]["source"] == "stripes"
    assert meta["selected"]["prior"] == [0.5, 0.5]


def test_toy_protocol_and_source_through_bench_sweep(toys, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["sweep", "--backbone", "dummy", "--weights", "random", "--dataset", "stripes:20", "stripes:30",
            "--head", "majority", "knn", "--results-dir", str(out)]
    assert main(argv + ["--dry-run"]) == 0
    plan = capsys.readouterr().out
    assert "4 runs: 4 probes" in plan and "2 extractions (2 shared by several runs)" in plan
    assert main(argv) == 0
    assert len(glob(str(out / "runs" / "*.csv"))) == 4
    with pytest.raises(UserError, match="unknown head 'majorty'; did you mean: majority"):
        resolve("dummy", "stripes:20", head="majorty")


def test_unknown_dataset_lists_sources_forms():
    with pytest.raises(UserError, match="unknown dataset 'breastmnst'; did you mean: breastmnist"):
        resolve("dummy", "breastmnst")


# --- the Python API ---------------------------------------------------------------------------

def test_api_run_returns_a_result_also_when_already_done(data_root, tmp_path):
    kw = dict(weights="random", data_root=data_root, skip_md5=True, results_dir=tmp_path / "r", quiet=True,
              head_epochs=10)
    first = bench.run("dummy", "breastmnist", **kw)
    again = bench.run("dummy", "breastmnist", **kw)
    assert (first.status, again.status) == ("done", "existing") and first.run_id == again.run_id
    pd.testing.assert_frame_equal(first.metrics, again.metrics)
    assert again.selected == first.selected and again.selected["head"] == "linear"
    y_true, y_score = again.test_scores()
    assert y_score.shape == (48, 2) and len(y_true) == 48
    assert again.metric("auc") == first.table().loc["test", "auc"]
    with pytest.raises(UserError, match="unknown option 'epoch'; did you mean: epochs"):
        bench.run("dummy", "breastmnist", epoch=3)


def test_api_takes_a_model_instance_and_a_cache(data_root, tmp_path):
    import backbones
    from bench.cache import FeatureCache

    model = backbones.build("dummy", weights="random")
    cache = FeatureCache(tmp_path / "my-cache")
    kw = dict(data_root=data_root, skip_md5=True, results_dir=tmp_path / "r", quiet=True, head="knn")
    res = bench.run(model, "breastmnist", cache=cache, **kw)
    assert res.config.weights == "instance" and res.config.weights_fingerprint.startswith("sha256:")
    assert len(list((tmp_path / "my-cache" / "features").glob("*.npy"))) == 3  # the injected cache was used
    # other parameters are another model: another run id and other cached features
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    other = bench.run(model, "breastmnist", cache=cache, **kw)
    assert other.run_id != res.run_id and len(list((tmp_path / "my-cache" / "features").glob("*.npy"))) == 6


def test_load_results_is_the_glob_of_runs(data_root, tmp_path):
    out = tmp_path / "r"
    for head in ("knn", "mlp"):
        bench.run("dummy", "breastmnist", weights="random", head=head, epochs=1, data_root=data_root,
                  skip_md5=True, results_dir=out, quiet=True)
    by_glob = pd.concat(map(pd.read_csv, glob(str(out / "runs" / "*.csv"))), ignore_index=True)
    assert set(by_glob.columns) >= {"run_id", "backbone", "split", "metric", "value"}
    assert sorted(by_glob.run_id.unique()) == sorted(bench.load_results(out).run_id.unique())
    assert len(by_glob) == len(bench.load_results(out)) and by_glob.run_id.nunique() == 2
    assert list((out / "curves").glob("*.csv")) and not list((out / "runs").glob("*.json"))


# --- results written before the layout change ---------------------------------------------------

def test_old_layout_still_loads_and_migrates(data_root, tmp_path):
    from bench.report.load import load_results
    from bench.results import ResultStore
    from bench.sweep.plan import known_weights_ids

    out = tmp_path / "r"
    res = bench.run("dummy", "breastmnist", weights="random", head="mlp", epochs=1, data_root=data_root,
                    skip_md5=True, results_dir=out, quiet=True)
    rid = res.run_id
    # the layout before 0.2: provenance, scores and curves inside runs/
    (out / "meta" / f"{rid}.json").rename(out / "runs" / f"{rid}.json")
    (out / "scores" / f"{rid}.npz").rename(out / "runs" / f"{rid}.scores.npz")
    (out / "curves" / f"{rid}.csv").rename(out / "runs" / f"{rid}.curves.csv")
    store = ResultStore(out)
    assert store.run_ids() == [rid]  # the old curves CSV is not a result
    old = load_results(out)
    assert old.meta[rid]["config"]["head"] == "mlp" and old.scores(rid)[1].shape == (48, 2)
    assert bench.run("dummy", "breastmnist", weights="random", head="mlp", epochs=1, data_root=data_root,
                     skip_md5=True, results_dir=out, quiet=True).selected == res.selected
    assert store.migrate() == 3 and not store.legacy_files()
    assert (out / "curves" / f"{rid}.csv").exists() and load_results(out).scores(rid) is not None
    assert known_weights_ids(out) == {}  # random weights teach the planner nothing; and no error


def test_a_weights_file_counts_by_content_not_by_path(tmp_path):
    import backbones
    from safetensors.torch import save_file

    model = backbones.build("dummy", weights="random")
    a, b = tmp_path / "a" / "w.safetensors", tmp_path / "b" / "w.safetensors"
    for p in (a, b):
        p.parent.mkdir()
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(p))
    ids = {resolve("dummy", "breastmnist", weights=str(p)).run_id for p in (a, b)}
    assert len(ids) == 1
    with torch.no_grad():
        next(model.parameters()).add_(1)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(b))
    assert resolve("dummy", "breastmnist", weights=str(b)).run_id not in ids
