"""Download the wheels the GPU machine lacks (benchmarks/gpu_wheels.sh is the documented entry).

The project's requirements (with its test extras) are followed one by one: a requirement the GPU
machine's pip list satisfies is skipped; any other is downloaded with ``pip download --no-deps``
and its own requirements (from the wheel's METADATA, markers evaluated for the target Python) are
followed in turn. The torch family is never downloaded: the check runs the CUDA build that the
GPU machine has. Only standard pip is used (its vendored ``packaging`` where no other is present).
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import zipfile
from pathlib import Path

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore
    from pip._vendor.packaging.requirements import Requirement  # type: ignore
    from pip._vendor.packaging.utils import canonicalize_name  # type: ignore
    from pip._vendor.packaging.version import Version  # type: ignore

ROOT = Path(__file__).resolve().parents[1]
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*)$")


def project_requirements(extras: tuple[str, ...] = ("test",)) -> list[Requirement]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib  # type: ignore
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for e in extras:
        reqs += project.get("optional-dependencies", {}).get(e, [])
    return [Requirement(r) for r in reqs]


def read_have(path: Path | None) -> dict[str, Version]:
    """``pip list --format=freeze`` (name==version) or plain ``pip list`` (name version) output."""
    have: dict[str, Version] = {}
    if path is None:
        return have
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:==|\s)\s*([0-9][^\s;]*)", line)
        if m:
            try:
                have[canonicalize_name(m.group(1))] = Version(m.group(2))
            except Exception:
                continue
    return have


def wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def newest_file(folder: Path, name: str, before: set[Path]) -> Path:
    new = [p for p in folder.iterdir() if p not in before]
    norm = canonicalize_name(name).replace("-", "_")
    match = [p for p in new if canonicalize_name(re.split(r"-\d", p.name, 1)[0]).replace("-", "_") == norm] or new
    if not match:  # already in the folder from an earlier run
        match = [p for p in folder.iterdir()
                 if canonicalize_name(re.split(r"-\d", p.name, 1)[0]).replace("-", "_") == norm]
    if not match:
        raise SystemExit(f"gpu_wheels: pip downloaded nothing for {name}")
    return max(match, key=lambda p: p.stat().st_mtime)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--have", type=Path, help="the GPU machine's `pip list --format=freeze`")
    p.add_argument("--python-version", help="the GPU machine's Python, e.g. 3.11 (default: this one's)")
    p.add_argument("--platform", help="the GPU machine's wheel platform, e.g. manylinux2014_x86_64")
    p.add_argument("--no-project", action="store_true", help="leave out the project's own wheel")
    a = p.parse_args()
    a.dir.mkdir(parents=True, exist_ok=True)
    have = read_have(a.have)
    if a.have and "torch" not in have:
        raise SystemExit(f"gpu_wheels: {a.have} lists no torch; install the CUDA build of torch there first")
    target = ["--only-binary=:all:"] + (["--python-version", a.python_version] if a.python_version else []) + \
        (["--platform", a.platform] if a.platform else []) if (a.python_version or a.platform) else []
    env = default_environment()
    if a.python_version:
        env.update(python_version=".".join(a.python_version.split(".")[:2]), python_full_version=a.python_version
                   if a.python_version.count(".") == 2 else a.python_version + ".0")
    pip = [sys.executable, "-m", "pip"]
    queue, done, fetched = project_requirements(), set(), []
    while queue:
        req = queue.pop(0)
        name = canonicalize_name(req.name)
        if name in done:
            continue
        done.add(name)
        if NEVER.match(name):
            if a.have and name not in have and name != "torchaudio" and name != "triton" and not name.startswith("nvidia"):
                print(f"gpu_wheels: note: the GPU machine has no {name}; install the build that matches its torch",
                      file=sys.stderr)
            continue
        if name in have and req.specifier.contains(have[name], prereleases=True):
            continue
        before = set(a.dir.iterdir())
        subprocess.run([*pip, "download", "-q", "--no-deps", "-d", str(a.dir), *target, str(req)], check=True)
        got = newest_file(a.dir, req.name, before)
        if not got.name.endswith(".whl"):  # an sdist: build its wheel here (pure-Python ones only)
            subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(a.dir), str(got)], check=True)
            got.unlink()
            got = newest_file(a.dir, req.name, set())
        fetched.append(got)
        for dep in wheel_requirements(got):
            d = Requirement(dep)
            extras = req.extras or {""}
            if d.marker is None or any(d.marker.evaluate({**env, "extra": e}) for e in extras):
                queue.append(d)
    if not a.no_project:
        subprocess.run([*pip, "wheel", "-q", "--no-deps", "-w", str(a.dir), str(ROOT)], check=True)
        fetched.append(newest_file(a.dir, "medfm-bench", set()))
    size = sum(f.stat().st_size for f in fetched) / 2**20
    print(f"gpu_wheels: {len(fetched)} wheels, {size:.1f} MiB in {a.dir}")
    for f in fetched:
        print(f"  {f.name}")


if __name__ == "__main__":
    main()
