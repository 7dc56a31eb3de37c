"""Download the wheels the GPU machine lacks (benchmarks/gpu_wheels.sh is the documented entry).

The project's requirements (with its test extras) are resolved against the GPU machine's package
list (``--have``: ``name``, ``name==version`` or ``pip list`` lines; default
benchmarks/gpu_machine_packages.txt). Every specifier seen for a name is kept, per requiring
package, and all of them must hold at once: a stricter one met later replaces a wheel fetched
under a looser one. A name the list has is skipped unless a requirement needs a version the list
rules out (a name listed without a version is taken to satisfy every specifier). The torch family
(torch, torchvision, torchaudio, triton, nvidia-*) is never downloaded: the check runs the CUDA
build the machine has. Wheels are fetched with ``pip download --no-deps`` for the target Python
and platform (default: CPython 3.12, manylinux x86_64, the GPU machine's); a project that ships
only an sdist is built into a wheel here, pure-Python ones only. Only standard pip is used.
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

try:
    from packaging.markers import default_environment
    from packaging.requirements import Requirement
    from packaging.specifiers import SpecifierSet
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import InvalidVersion, Version
except ImportError:  # pip carries its own copy
    from pip._vendor.packaging.markers import default_environment  # type: ignore
    from pip._vendor.packaging.requirements import Requirement  # type: ignore
    from pip._vendor.packaging.specifiers import SpecifierSet  # type: ignore
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore
    from pip._vendor.packaging.version import InvalidVersion, Version  # type: ignore

ROOT = Path(__file__).resolve().parents[1]
HAVE = ROOT / "benchmarks" / "gpu_machine_packages.txt"
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*)$")
PROJECT = "<project>"  # the requiring side of the project's own requirements
# distributions that install the same module under another name: grad-cam asks for opencv-python,
# the GPU machine has opencv-python-headless (both are cv2)
PROVIDED_BY = {
    "opencv-python": ("opencv-python-headless", "opencv-contrib-python", "opencv-contrib-python-headless"),
    "opencv-python-headless": ("opencv-python", "opencv-contrib-python", "opencv-contrib-python-headless"),
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64")

Have = dict  # canonical name -> Version, or None where the list gives no version


@dataclass
class Fetched:
    """One downloaded wheel: its version, its Requires-Dist lines, the file."""

    version: Version
    requires: list[str]
    path: Path | None = None
    extras: set[str] = field(default_factory=set)


Fetch = Callable[[str, SpecifierSet], Fetched]


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


def parse_have(text: str) -> Have:
    """``name``, ``name==version``, ``name version`` (pip list) or ``name @ url`` per line;
    ``#`` comments, pip list's header and option lines are skipped."""
    have: Have = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-") or line.lower().startswith("package "):
            continue
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)(?:\[[^\]]*\])?(?:(?:\s*===?\s*|\s+)([^\s;@]+))?", line)
        if not m:
            continue
        try:
            version = Version(m.group(2)) if m.group(2) else None
        except InvalidVersion:
            version = None
        have[canonicalize_name(m.group(1))] = version
    return have


def present(name: str, spec: SpecifierSet, have: Have) -> str | None:
    """The listed distribution that meets ``spec`` for ``name`` (itself or one that provides its
    module), or None."""
    for candidate in (name, *PROVIDED_BY.get(name, ())):
        if candidate in have and (have[candidate] is None or spec.contains(have[candidate], prereleases=True)):
            return candidate
    return None


def target_environment(python_version: str | None) -> dict[str, str]:
    """Marker values for the target: this interpreter's, or CPython ``python_version`` on
    Linux x86_64."""
    env = dict(default_environment())
    if python_version:
        full = python_version if python_version.count(".") == 2 else python_version + ".0"
        env.update(python_version=".".join(python_version.split(".")[:2]), python_full_version=full,
                   implementation_name="cpython", platform_python_implementation="CPython",
                   sys_platform="linux", platform_system="Linux", platform_machine="x86_64", os_name="posix")
    return env


def _applies(req: Requirement, extras: set[str], env: dict[str, str]) -> bool:
    return req.marker is None or any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}))


def _combined(reqs: dict[str, Requirement]) -> tuple[SpecifierSet, set[str]]:
    spec, extras = SpecifierSet(), set()
    for r in reqs.values():
        spec &= r.specifier
        extras |= set(r.extras)
    return spec, extras


def resolve(roots: list[Requirement], have: Have, fetch: Fetch, env: dict[str, str],
            log: Callable[[str], None] = lambda m: None) -> dict[str, Fetched]:
    """What to download: each name the have-list does not satisfy, fetched for the intersection
    of every specifier its requirers state; refetched when a later requirer is stricter."""
    # name -> {requiring package -> requirement}: a refetched package's old requirements go away
    wants: dict[str, dict[str, Requirement]] = defaultdict(dict)
    picked: dict[str, Fetched] = {}

    def add(source: str, reqs: list[Requirement], extras: set[str]) -> None:
        for r in reqs:
            if _applies(r, extras, env):
                wants[canonicalize_name(r.name)][source] = r

    add(PROJECT, roots, set())
    noted: set[str] = set()
    for _ in range(1000):  # each round fetches one wheel; a cycle of refetches must not run forever
        todo = None
        for name in sorted(wants):
            spec, extras = _combined(wants[name])
            if not wants[name] or NEVER.match(name) or present(name, spec, have):
                continue
            got = picked.get(name)
            if got is None or not spec.contains(got.version, prereleases=True) or not extras <= got.extras:
                todo = (name, spec, extras)
                break
        if todo is None:
            break
        name, spec, extras = todo
        new = fetch(name, spec)
        if not spec.contains(new.version, prereleases=True):
            raise SystemExit(f"gpu_wheels: pip gave {name} {new.version}, outside {spec}")
        if name in picked:
            log(f"{name}: {picked[name].version} does not meet {spec}; now {new.version}")
            for reqs in wants.values():
                reqs.pop(name, None)
        new.extras = set(extras)
        picked[name] = new
        add(name, [Requirement(s) for s in new.requires], extras)
    else:
        raise SystemExit("gpu_wheels: the requirements did not settle in 1000 downloads")
    for name, reqs in sorted(wants.items()):  # say where the machine's own build must do
        spec, _ = _combined(reqs)
        if NEVER.match(name) and name not in noted and reqs and not present(name, spec, have):
            noted.add(name)
            log(f"note: never downloaded: {name}{spec or ''} (the GPU machine has "
                f"{have.get(name) if name in have else 'none'})")
    return _reachable(picked, wants)


def _reachable(picked: dict[str, Fetched], wants: dict[str, dict[str, Requirement]]) -> dict[str, Fetched]:
    """Drop wheels nothing needs any more (their requirer was refetched without them)."""
    keep, frontier = set(), [PROJECT]
    while frontier:
        source = frontier.pop()
        for name, reqs in wants.items():
            if source in reqs and name in picked and name not in keep:
                keep.add(name)
                frontier.append(name)
    return {n: f for n, f in picked.items() if n in keep}


def wheel_requirements(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(name).decode("utf-8", "replace")
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def pip_fetcher(dest: Path, python_version: str | None, platforms: tuple[str, ...]) -> Fetch:
    """``pip download --no-deps`` of the best wheel for the target into ``dest``; an sdist-only
    project is built into a (pure-Python) wheel here."""
    pip = [sys.executable, "-m", "pip"]
    target = ["--only-binary=:all:"]
    if python_version:
        target += ["--python-version", python_version, "--implementation", "cp"]
        target += [x for p in platforms for x in ("--platform", p)]

    def fetch(name: str, spec: SpecifierSet) -> Fetched:
        with tempfile.TemporaryDirectory() as tmp_name:
            tmp = Path(tmp_name)
            req = f"{name}{spec}"
            done = subprocess.run([*pip, "download", "-q", "--no-deps", "-d", tmp_name, *target, req],
                                  capture_output=True, text=True)
            if done.returncode != 0:  # no wheel for the target: an sdist, built here
                sdist = subprocess.run([*pip, "download", "-q", "--no-deps", "--no-binary", ":all:", "-d", tmp_name,
                                        req], capture_output=True, text=True)
                built = sdist.returncode == 0 and subprocess.run(
                    [*pip, "wheel", "-q", "--no-deps", "-w", tmp_name, str(next(tmp.iterdir()))],
                    capture_output=True, text=True).returncode == 0
                if not built:
                    why = (done.stderr.strip().splitlines() or ["?"])[-1]
                    raise SystemExit(f"gpu_wheels: no wheel or buildable sdist of {req} for the target: {why}")
            wheels = list(tmp.glob("*.whl"))
            if len(wheels) != 1:
                raise SystemExit(f"gpu_wheels: pip gave no single wheel for {req}: {[p.name for p in tmp.iterdir()]}")
            wheel = wheels[0]
            if done.returncode != 0 and not wheel.name.endswith("-none-any.whl"):
                raise SystemExit(f"gpu_wheels: {req} has no wheel for the target and {wheel.name} is built for here")
            path = dest / wheel.name
            shutil.move(str(wheel), path)
        return Fetched(parse_wheel_filename(path.name)[1], wheel_requirements(path), path)

    return fetch


def write_source(dest: Path, picked: dict[str, Fetched]) -> None:
    """The checkout's revision beside the wheels: the GPU machine's copy of the tree has no .git."""
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty", "--abbrev=12"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        rev = ""
    lines = [f"git {rev or 'unknown'}"] + [f"{n}=={f.version}" for n, f in sorted(picked.items())]
    (dest / "SOURCE.txt").write_text("\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("dir", type=Path)
    p.add_argument("--have", type=Path, default=HAVE,
                   help="what the GPU machine has: names, name==version or its `pip list` (default: %(default)s)")
    p.add_argument("--python-version", default="3.12",
                   help="the GPU machine's Python (default %(default)s); 'native' for this interpreter's")
    p.add_argument("--platform", action="append",
                   help=f"wheel platform tags of the GPU machine (repeatable; default {', '.join(PLATFORMS)})")
    a = p.parse_args()
    python_version = None if a.python_version == "native" else a.python_version
    if not a.have.is_file():
        raise SystemExit(f"gpu_wheels: --have {a.have}: no such file")
    have = parse_have(a.have.read_text())
    if "torch" not in have:
        raise SystemExit(f"gpu_wheels: {a.have} lists no torch; install the CUDA build of torch there first")
    a.dir.mkdir(parents=True, exist_ok=True)
    fetch = pip_fetcher(a.dir, python_version, tuple(a.platform or PLATFORMS))
    picked = resolve(project_requirements(), have, fetch, target_environment(python_version),
                     log=lambda m: print(f"gpu_wheels: {m}", file=sys.stderr))
    keep = {f.path.name for f in picked.values() if f.path}
    for old in a.dir.glob("*.whl"):  # one version of each: two would stop the install there
        if old.name not in keep:
            old.unlink()
    write_source(a.dir, picked)
    size = sum((a.dir / n).stat().st_size for n in keep) / 2**20
    print(f"gpu_wheels: {len(keep)} wheels, {size:.1f} MiB in {a.dir}")
    for name in sorted(keep):
        print(f"  {name}")
    if size > 48:
        print("gpu_wheels: warning: over 48 MiB; the device tool carries 64 MiB with the working tree",
              file=sys.stderr)


if __name__ == "__main__":
    main()
