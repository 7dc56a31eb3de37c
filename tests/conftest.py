"""Shared fixtures: synthetic MedMNIST-format files, isolated caches, the real-data folder."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

SHARED_MEDMNIST = Path(__file__).resolve().parents[1].parent / "shared" / "medmnist"

# the test-only switch: real families' random-init `tiny` variants (3 blocks, width 32) are
# offered to the test suite and its subprocesses only (backbones.base.test_models_on)
os.environ["BENCH_TEST_MODELS"] = "1"


def write_synthetic_npz(root: Path, flag: str = "breastmnist", size: int = 28,
                        n: tuple[int, int, int] = (96, 32, 48), channels: int | None = None,
                        n_classes: int | None = None, seed: int = 0, signal: float = 90.0) -> Path:
    """A MedMNIST-format .npz whose label is visible in the image (a learnable signal).

    Class c brightens a horizontal band whose position depends on c, on top of noise, so a
    linear probe on almost any features is far above chance. Task, channels and label count
    follow medmnist.INFO for ``flag`` unless overridden.
    """
    from medmnist import INFO

    info = INFO[flag]
    task = info["task"]
    channels = channels or info["n_channels"]
    n_classes = n_classes or len(info["label"])
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for split, count in zip(("train", "val", "test"), n):
        if task.startswith("multi-label"):
            labels = (rng.random((count, n_classes)) < 0.3).astype(np.uint8)
        else:
            labels = (np.arange(count) % n_classes).astype(np.uint8)
            rng.shuffle(labels)
            labels = labels[:, None]
        imgs = rng.normal(100, 20, (count, size, size)).astype(np.float32)
        band = max(size // max(n_classes, 1), 1)
        for i in range(count):
            active = np.flatnonzero(labels[i]) if task.startswith("multi-label") else [labels[i, 0]]
            for c in active:
                imgs[i, c * band:(c + 1) * band, :] += signal
        imgs = np.clip(imgs, 0, 255).astype(np.uint8)
        if channels == 3:
            imgs = np.repeat(imgs[..., None], 3, axis=-1)
        arrays[f"{split}_images"] = imgs
        arrays[f"{split}_labels"] = labels
    root.mkdir(parents=True, exist_ok=True)
    path = root / (f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz")
    np.savez_compressed(path, **arrays)
    return path


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory, monkeypatch):
    """No test touches the user's caches or reaches a network."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("BENCH_CACHE_DIR", str(home / "bench-cache"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(home / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BENCH_PROBE_TIMEOUT", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")


@pytest.fixture
def data_root(tmp_path) -> Path:
    """A data root with synthetic breastmnist (28) and retinamnist (28) files."""
    root = tmp_path / "medmnist"
    write_synthetic_npz(root, "breastmnist", 28)
    write_synthetic_npz(root, "retinamnist", 28, n=(100, 40, 50))
    return root


@pytest.fixture
def shared_medmnist() -> Path:
    if not (SHARED_MEDMNIST / "breastmnist.npz").exists():
        pytest.skip("../shared/medmnist is absent")
    return SHARED_MEDMNIST


def bench_env() -> dict[str, str]:
    return dict(os.environ)


@pytest.fixture
def captured():
    """The backbone each trained run uses (with a copy of its state when the protocol starts) and
    the head it trains, seen through the protocol seam: spies of the fine-tune and DeiT-head
    protocols are registered ahead of the built-ins for the test, so they run the same configs."""
    from bench.protocols import PROTOCOLS, register_protocol
    from bench.protocols.deit import DeiTHead
    from bench.protocols.finetune import Finetune

    got: dict[str, list] = {"models": [], "init": [], "heads": []}
    spies = []
    for base in (Finetune, DeiTHead):
        class Spy(base):
            name = f"spy-{base.name}"

            def run(self, ctx):
                got["models"].append(ctx.model)
                got["init"].append({k: v.detach().clone() for k, v in ctx.model.state_dict().items()})
                return super().run(ctx)

            def build_head(self, cfg, model, n_outputs, pretrained=None):
                head = super().build_head(cfg, model, n_outputs, pretrained)
                if pretrained is None:  # the run's head, not a dry run's parameter count
                    got["heads"].append(head)
                return head

        spies.append(register_protocol(Spy()))
    yield got
    for spy in spies:
        PROTOCOLS.unregister(spy.name)
