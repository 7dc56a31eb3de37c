"""The GPU check's preparation and logic on a CPU: the wheel resolution (no network), the driver's
tiny dry run with failures injected, the step guard, the summary's size, and the shell script's
path when the interpreter has no torch."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_check  # noqa: E402
import gpu_wheels  # noqa: E402
from gpu_wheels import Fetched, Requirement, SpecifierSet, Version  # noqa: E402

# name -> version -> Requires-Dist lines: a registry that needs no network
INDEX = {
    "alpha": {"1.0": [], "2.0": [], "3.0": ["aardvark"]},
    "beta": {"1.0": ["alpha<3,>=2"]},  # stricter than the root's alpha>=1, met after alpha is fetched
    "gamma": {"1.0": [], "2.5": []},
    "kappa": {"5.0": []},
    "delta": {"9.0": []},
    "aardvark": {"1.0": []},
    "grad-like": {"1.0": ["opencv-python", "torch>=99", "old-only; python_version < '3'"]},
    "old-only": {"1.0": []},
}
HAVE = """# what the machine has
Package            Version
------------------ -------
gamma==1.0
kappa 5.0
delta
torch==2.11.0
opencv_python_headless==4.12.0
"""


def fake_fetch(calls: list):
    def fetch(name: str, spec: SpecifierSet) -> Fetched:
        calls.append((name, str(spec)))
        versions = [Version(v) for v in INDEX[name] if spec.contains(Version(v))]
        best = max(versions)
        return Fetched(best, INDEX[name][str(best)])

    return fetch


def test_resolution_meets_every_specifier_and_skips_what_the_machine_has():
    have = gpu_wheels.parse_have(HAVE)
    assert have["gamma"] == Version("1.0") and have["kappa"] == Version("5.0") and have["delta"] is None
    assert "package" not in have and "opencv-python-headless" in have
    roots = [Requirement(r) for r in ("alpha>=1", "beta", "gamma>=2", "kappa>=2", "delta>=9", "torch>=2.1",
                                      "grad-like")]
    calls: list = []
    notes: list = []
    picked = gpu_wheels.resolve(roots, have, fake_fetch(calls), gpu_wheels.target_environment("3.12"),
                                log=notes.append)
    # alpha 3.0 came first (root: >=1), with aardvark; beta's <3,>=2 then replaced it, and aardvark went
    assert {n: str(f.version) for n, f in picked.items()} == {"alpha": "2.0", "beta": "1.0", "gamma": "2.5",
                                                              "grad-like": "1.0"}
    assert [c for c in calls if c[0] == "alpha"][-1] == ("alpha", str(SpecifierSet("<3,>=2") & SpecifierSet(">=1")))
    fetched = {c[0] for c in calls}
    assert "aardvark" in fetched  # fetched for alpha 3.0, then dropped with it
    assert not fetched & {"kappa", "delta", "torch", "opencv-python", "old-only"}
    assert any("torch" in n and "never downloaded" in n for n in notes)  # torch>=99: the machine's, noted


def test_a_wheel_outside_the_specifier_stops_the_resolution():
    def wrong(name: str, spec: SpecifierSet) -> Fetched:
        return Fetched(Version("0.1"), [])

    with pytest.raises(SystemExit, match="outside"):
        gpu_wheels.resolve([Requirement("alpha>=1")], {}, wrong, gpu_wheels.target_environment(None))


def test_the_shipped_package_list_reads_as_the_gpu_machine():
    have = gpu_wheels.parse_have(gpu_wheels.HAVE.read_text())
    assert have["torch"] == Version("2.11.0") and have["torchvision"] == Version("0.26.0")
    assert "timm" in have and "pytest-timeout" in have and "medmnist" not in have


def test_step_guard_turns_a_timeout_and_an_error_into_rows(tmp_path):
    check = gpu_check.Check(60, tmp_path, reserve_s=1)

    def stubborn():
        try:
            time.sleep(5)
        except Exception:  # as Frozen's compile fallback does: must not swallow the timeout
            return "swallowed"

    def broken():
        raise ValueError("bad input\nsecond line")

    def missing():
        try:
            import no_such_module_here  # noqa: F401
        except ImportError as e:
            raise RuntimeError("backbone needs a library") from e

    t = time.perf_counter()
    assert check.step("s", "slow", stubborn, limit=0.3, need=0.1) is None
    assert time.perf_counter() - t < 3
    check.step("s", "broken", broken)
    check.step("s", "missing", missing)
    assert check.step("s", "fine", lambda: 7) == 7
    rows = {r["context"]: r for r in csv.DictReader(open(tmp_path / "gpu_check.csv"))}
    assert rows["slow"]["metric"] == "timeout"
    assert rows["broken"]["metric"] == "error" and rows["broken"]["note"] == "ValueError: bad input"
    assert rows["missing"]["metric"] == "skipped" and "no_such_module_here" in rows["missing"]["note"]
    assert "fine" not in rows


def test_pytest_output_cut_short_keeps_the_results_so_far():
    out = "\n".join([
        "collected 5 items",
        "tests/test_cuda.py::test_a PASSED",
        "tests/test_cuda.py::test_b[bf16] FAILED                          [ 40%]",
        "tests/test_cuda.py::test_c SKIPPED (no bf16 on this GPU)                [ 60%]",
        "FAILED tests/test_cuda.py::test_b[bf16] - AssertionError: too far",
    ])
    results, collected = gpu_check.parse_pytest(out)
    assert collected == 5
    assert results == {"test_a": ("passed", ""), "test_b[bf16]": ("failed", "AssertionError: too far"),
                       "test_c": ("skipped", "no bf16 on this GPU")}


def test_the_summary_stays_compact_however_many_rows():
    rows = [{"date": "", "git": "", "benchmark": "throughput", "context": f"timm:model_{i}/v at 224px, H200, bf16",
             "metric": m, "value": "123.4", "note": "warm-up 1.0s; compile: on"}
            for i in range(300) for m in ("images_per_s", "images_per_s_fp32", "images_per_s_bf16_compile")]
    rows += [{"date": "", "git": "", "benchmark": "gpu_check", "context": f"step {i}", "metric": "error",
              "value": "nan", "note": "x" * 400} for i in range(100)]
    text = gpu_check.summarize(rows, Path("gpu_check.csv"))
    assert len(text) <= gpu_check.SUMMARY_CHARS and "timm:model_0" in text and "100 step problem(s)" in text


def test_tiny_dry_run_writes_every_section_and_survives_failures(tmp_path, monkeypatch):
    install = tmp_path / "install.csv"
    install.write_text("date,git,benchmark,context,metric,value,note\n"
                       'now,abc,install,"3 wheels",ok,1,"medmnist open_clip"\n'
                       "now,abc,install,import open_clip,missing,0,ModuleNotFoundError: no open_clip\n")
    real = gpu_check.throughput

    def flaky(check, spec, modes, *a, **k):
        if spec == "simplecnn":
            raise RuntimeError("injected failure")
        return real(check, spec, modes, *a, **k)

    monkeypatch.setattr(gpu_check, "throughput", flaky)
    grid = tmp_path / "grid.yaml"  # one backbone to cost: the dry run's time goes to the check's logic
    grid.write_text("name: g\nbackbones: [dummy]\nweights: random\ndatasets: [breastmnist]\nsizes: [28]\n"
                    "protocols:\n  - {head: linear}\nseeds: [0]\n")
    out = tmp_path / "out"
    rc = gpu_check.main(["--device", "cpu", "--tiny", "--out", str(out), "--budget-s", "170", "--estimate", str(grid),
                         "--install-rows", str(install), "--backbones", "simplecnn,nosuchnet"])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "gpu_check.csv")))
    got = {(r["benchmark"], r["metric"]) for r in rows}
    for section_metric in [("install", "ok"), ("install", "missing"), ("gpu_check", "started"),
                           ("datapath", "path_over_model"), ("throughput", "images_per_s"),
                           ("throughput", "images_per_s_fp32"), ("throughput", "images_per_s_bf16_channels_last"),
                           ("throughput", "images_per_s_bf16_compile"), ("end_to_end", "wall_s"),
                           ("cuda_tests", "wall_s"), ("cuda_tests", "skipped"), ("estimate_cost", "gpu_hours")]:
        assert section_metric in got, section_metric
    assert rows[0]["benchmark"] == "install"  # the installation's rows first
    errors = {r["context"]: r["note"] for r in rows if r["metric"] == "error"}
    assert "injected failure" in errors["simplecnn [bf16]"]
    assert "unknown backbone" in errors["nosuchnet [bf16]"]
    e2e = [r["context"] for r in rows if r["benchmark"] == "end_to_end" and r["metric"] == "wall_s"]
    assert any("linear probe" in c for c in e2e) and any("last-2" in c for c in e2e)
    core = {r["context"].split("/")[0] for r in rows if r["metric"] == "images_per_s"}
    assert {"resnet18", "deit"} <= core
    summary = (out / "summary.txt").read_text()
    assert "injected failure" in summary and "deit" in summary and len(summary) < 12000
    assert (out / "pytest.log").is_file()


def test_the_script_without_torch_still_writes_its_csv_and_summary(tmp_path):
    fake = tmp_path / "python-without-torch"  # -S: no site-packages, so no torch; csv still works
    fake.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--python", str(fake),
                           "--out", str(tmp_path / "out"), "--wheels", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "gpu_check.csv")))
    assert any(r["metric"] == "missing" and "no working torch" in r["note"] for r in rows)
    assert any(r["context"] == "driver" and r["metric"] == "not_run" for r in rows)
    assert "GPU check: did not start" in done.stdout and len(done.stdout) < 12000


def _wheel(folder: Path, name: str) -> Path:
    """A minimal pure-Python wheel holding the module ``name``."""
    import zipfile

    path = folder / f"{name}-1.0-py3-none-any.whl"
    info = f"{name}-1.0.dist-info"
    files = {f"{name}/__init__.py": "VALUE = 1\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return path


def test_a_broken_wheel_is_a_row_and_the_others_are_installed_one_by_one(tmp_path):
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "gpucheckok")
    (wheels / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip file")
    env = {**{k: v for k, v in os.environ.items() if k not in ("OUT", "PYTHONPATH")},
           "GPU_CHECK_SITE": str(tmp_path / "site")}
    # --total-s 40: too little left for the driver, so only the installation runs (and the summary)
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--python", sys.executable,
                           "--wheels", str(wheels), "--out", str(tmp_path / "out"), "--total-s", "40"],
                          capture_output=True, text=True, timeout=120, env=env)
    rows = list(csv.DictReader(open(tmp_path / "out" / "gpu_check.csv")))
    by = {r["context"]: r for r in rows}
    assert by["all 2 wheels at once"]["metric"] == "failed"
    assert by["broken-1.0-py3-none-any.whl"]["metric"] == "failed"
    assert by["1 of 2 wheels, one at a time"]["metric"] == "ok"
    assert (tmp_path / "site" / "gpucheckok" / "__init__.py").is_file()
    assert by["driver"]["metric"] == "not_run" and done.returncode != 0
    assert "install:" in done.stdout and "broken-1.0" in done.stdout


def test_the_scripts_help_is_their_header():
    for script in ("gpu_check.sh", "gpu_wheels.sh"):
        done = subprocess.run(["bash", str(ROOT / "benchmarks" / script), "--help"], capture_output=True, text=True,
                              timeout=10)
        assert done.returncode == 0 and done.stdout.startswith("The GPU check" if "check" in script else "Wheels")
        assert "set -" not in done.stdout
