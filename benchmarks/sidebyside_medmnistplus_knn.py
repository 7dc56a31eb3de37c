"""Side by side: `bench run --recipe medmnistplus --head knn` vs MedMNIST+'s own kNN code (CPU, not CI).

What it runs, on the SAME weights file and the SAME dataset file:
  1. theirs: sdoerrich97/rethinking-model-prototyping-MedMNISTPlus `evaluate.py` (its `__main__`
     block, run verbatim with runpy) for `training_procedure: kNN`. Their evaluate.py, utils.py
     and config.yaml are extracted with `git show HEAD:<file>` from the mirrored (bare) repo passed
     as the first argument. Patched only: timm.create_model(pretrained=True) builds with
     pretrained=False and loads the weights file (classifier keys dropped, as timm does when
     num_classes differs); config device -> cpu, data_path -> --data-root, dataset/img_size/
     architecture. Their functions extract_embeddings / knn_majority_vote / get_ACC_kNN are wrapped
     (not changed) to capture support-set and test embeddings, per-image predictions and ACC.
  2. ours: `bench run --backbone timm:ARCH.TAG --weights FILE --recipe medmnistplus --head knn`
     (majority vote, as the recipe), and again with `--knn-vote shares` (cached features reused)
     to compare the neighbour vote counts exactly.
  3. compare: per-image predicted labels (argmax of our y_score vs their kNN outputs), number of
     disagreements, test ACC of both, vote counts, and our cached features (cache/features/*.npy,
     split named in the .json sidecar) against their embeddings (max abs difference).

The weights are timm's architecture randomly initialised with torch.manual_seed(0) and saved as
safetensors (no hub access needed); any timm state dict file can be passed with --weights instead.

Usage (needs the mirrored repo and the MedMNIST .npz file, e.g. breastmnist.npz for 28 px):
  python benchmarks/sidebyside_medmnistplus_knn.py \\
      /work/.mirror/sdoerrich97+rethinking-model-prototyping-MedMNISTPlus/repo \\
      [--data-root ../shared/medmnist] [--dataset breastmnist] [--size 28] [--workdir /tmp/sbs-mplus]
Exit status 0 when predictions and ACC agree, 1 otherwise. Not part of the test suite
(pytest collects tests/ only); it takes about 2-3 minutes for BreastMNIST on 2 CPU cores.
"""
from __future__ import annotations

import argparse
import glob
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from common import ROOT, SHARED

THEIR_FILES = ("evaluate.py", "utils.py", "config.yaml")

DRIVER = r'''
import sys, runpy, numpy as np, timm
from safetensors.torch import load_file
work, weights = sys.argv[1], sys.argv[2]
sys.path.insert(0, work)
_orig = timm.create_model
def create_model(name, pretrained=False, **kw):
    m = _orig(name, pretrained=False, **kw)
    if pretrained:
        sd = load_file(weights)
        if kw.get("num_classes", 1000) != 1000:
            sd = {k: v for k, v in sd.items() if not k.startswith(("fc.", "head.", "classifier."))}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        assert not unexpected and all(k.startswith(("fc.", "head.", "classifier.")) for k in missing), (missing, unexpected)
    return m
timm.create_model = create_model
import utils
cap = {"test_emb": [], "pred": []}
_ee, _kv, _acc = utils.extract_embeddings, utils.knn_majority_vote, utils.get_ACC_kNN
def extract_embeddings(*a, **k):
    d = _ee(*a, **k); cap["support"] = d; return d
def knn_majority_vote(nbrs, emb, lab, task):
    cap["test_emb"].append(emb.copy()); out = _kv(nbrs, emb, lab, task)
    cap["pred"].append(out.numpy().copy()); return out
def get_ACC_kNN(y_true, y_pred, task):
    r = _acc(y_true, y_pred, task); cap.update(y_true=y_true, acc=r); return r
utils.extract_embeddings, utils.knn_majority_vote, utils.get_ACC_kNN = extract_embeddings, knn_majority_vote, get_ACC_kNN
sys.argv = ["evaluate.py", "--config_file", work + "/sbs_config.yaml"]
runpy.run_path(work + "/evaluate.py", run_name="__main__")
np.savez(work + "/theirs.npz", train_emb=cap["support"]["embeddings"],
         train_labels=cap["support"]["labels"], test_emb=np.concatenate(cap["test_emb"]),
         pred=np.concatenate(cap["pred"]), y_true=cap["y_true"], acc=cap["acc"])
'''


def sh(cmd: list[str], **kw) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, **kw)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mirror", help="git dir of the mirrored sdoerrich97/rethinking-model-prototyping-MedMNISTPlus")
    p.add_argument("--data-root", default=str(SHARED))
    p.add_argument("--dataset", default="breastmnist")
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--arch", default="resnet18", help="their architecture name (timm)")
    p.add_argument("--tag", default="a1_in1k", help="timm tag for ours (weights come from the file)")
    p.add_argument("--weights", default="", help="timm state dict (.safetensors); default: seed-0 random init")
    p.add_argument("--workdir", default="/tmp/sbs-medmnistplus")
    a = p.parse_args()
    import yaml

    work = Path(a.workdir)
    work.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    rev = subprocess.run(["git", "--git-dir", a.mirror, "rev-parse", "HEAD"], check=True,
                         capture_output=True, text=True).stdout.strip()
    for f in THEIR_FILES:
        (work / f).write_bytes(subprocess.run(["git", "--git-dir", a.mirror, "show", f"HEAD:{f}"],
                                              check=True, capture_output=True).stdout)
    cfg = yaml.safe_load((work / "config.yaml").read_text())
    cfg.update(data_path=a.data_root, device="cpu", dataset=a.dataset, img_size=a.size,
               training_procedure="kNN", architecture=a.arch)
    (work / "sbs_config.yaml").write_text(yaml.safe_dump(cfg))

    weights = a.weights or str(work / f"{a.arch}.safetensors")
    if not a.weights:
        import timm
        import torch
        from safetensors.torch import save_file

        torch.manual_seed(0)
        m = timm.create_model(a.arch, pretrained=False)
        save_file({k: v.contiguous() for k, v in m.state_dict().items()}, weights)

    (work / "driver.py").write_text(DRIVER)
    sh([py, str(work / "driver.py"), str(work), weights], cwd=work)

    res, cache = work / "results", work / "cache"
    base = [py, "-m", "bench.cli", "run", "--backbone", f"timm:{a.arch}.{a.tag}", "--weights", weights,
            "--recipe", "medmnistplus", "--head", "knn", "--dataset", a.dataset, "--size", str(a.size),
            "--data-root", a.data_root, "--results-dir", str(res), "--cache-dir", str(cache),
            "--device", "cpu", "--quiet"]
    ids = []
    for extra in ([], ["--knn-vote", "shares"]):
        sh(base + extra, cwd=ROOT)
        dry = subprocess.run(base + extra + ["--dry-run"], cwd=ROOT, check=True, capture_output=True, text=True)
        ids.append(json.JSONDecoder().raw_decode(dry.stdout[dry.stdout.index("{"):])[0]["run_id"])

    t = np.load(work / "theirs.npz")
    s = np.load(res / "scores" / f"{ids[0]}.npz")
    shares = np.load(res / "scores" / f"{ids[1]}.npz")
    y_true = s["y_true"].ravel()
    ours, theirs = s["y_score"].argmax(1), t["pred"].ravel().astype(int)
    k = 11
    from sklearn.neighbors import NearestNeighbors

    _, idx = NearestNeighbors(n_neighbors=k, algorithm="ball_tree").fit(t["train_emb"]).kneighbors(t["test_emb"])
    their_votes = np.stack([(t["train_labels"].ravel()[idx] == c).sum(1) for c in range(shares["y_score"].shape[1])], 1)
    our_votes = np.rint(shares["y_score"] * k).astype(int)
    acc_t, acc_o = float(t["acc"]), float((ours == y_true).mean())
    print(f"\ntheirs: sdoerrich97/rethinking-model-prototyping-MedMNISTPlus@{rev[:7]}; ours: {ids[0]}")
    print(f"  labels identical:          {np.array_equal(y_true, t['y_true'].ravel().astype(int))}")
    print(f"  test ACC theirs / ours:    {acc_t:.6f} / {acc_o:.6f}")
    print(f"  per-image disagreements:   {int((ours != theirs).sum())} / {len(ours)}")
    print(f"  vote-count disagreements:  {int((our_votes != their_votes).any(1).sum())} / {len(ours)}")
    for j in glob.glob(str(cache / "features" / "*.json")):
        split = json.loads(Path(j).read_text())["parts"]["split"]
        key = {"train": "train_emb", "test": "test_emb"}.get(split)
        if key:
            f = np.load(j[:-5] + ".npy")
            print(f"  features {split:<5} max abs diff: {np.abs(f - t[key]).max():.3g} "
                  f"(max |x| {np.abs(t[key]).max():.3g}, shape {f.shape})")
    return 0 if (ours == theirs).all() and abs(acc_t - acc_o) < 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
