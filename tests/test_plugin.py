"""The example plugin registers a backbone through the `bench.backbones` entry point and runs
through `bench run` like a built-in."""
from importlib import metadata

import pandas as pd
import pytest

from backbones import registry
from bench.cli import main
from bench.errors import UserError


def test_plugin_is_discovered_through_entry_points():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group=registry.ENTRY_POINT_GROUP)}
    if "mobilenetv3" not in eps:
        pytest.skip("examples/bench-plugin-example is not installed (setup.sh installs it)")
    assert eps["mobilenetv3"] == "bench_plugin_example:MOBILENETV3"
    assert "mobilenetv3" in registry.names()
    assert registry.get("mobilenetv3").spec.family.startswith("mobilenet")


def test_plugin_runs_end_to_end(capsys, data_root, tmp_path):
    if "mobilenetv3" not in registry.names():
        pytest.skip("example plugin not installed")
    code = main(["run", "--backbone", "mobilenetv3", "--weights", "random", "--input-size", "64",
                 "--dataset", "breastmnist", "--data-root", str(data_root), "--skip-md5", "--limit", "32",
                 "--results-dir", str(tmp_path / "r"), "--head-epochs", "10"])
    assert code == 0, capsys.readouterr().err
    [csv] = list((tmp_path / "r" / "runs").glob("*.csv"))
    assert (pd.read_csv(csv).backbone == "mobilenetv3").all()


def test_registered_at_runtime_and_did_you_mean():
    from backbones.dummy import DUMMY

    registry.register("my-tiny", DUMMY.spec, DUMMY.build)
    assert registry.get("my-tiny").spec is DUMMY.spec
    with pytest.raises(UserError, match="did you mean: my-tiny"):
        registry.get("my-tinny")
