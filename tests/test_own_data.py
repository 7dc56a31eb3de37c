"""Own data: image folders, CSV manifests, DICOM, the paper's four layouts in miniature, the
decode cache, grouped splits, and a folder run that scores exactly as the same images in an .npz."""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bench
from bench import datasets
from bench.cli import main
from bench.datasets import LoadOptions
from bench.datasets.images import Entry, draw_splits
from bench.errors import UserError


def opts(tmp_path: Path, **data) -> LoadOptions:
    return LoadOptions(root=data.pop("root", None), cache_dir=tmp_path / "cache", splits_dir=tmp_path / "splits",
                       data=tuple(data.items()), quiet=True)


def band_image(label: int, rng, size=(12, 12), rgb=False) -> np.ndarray:
    """Noise with a bright band whose row depends on the label (learnable)."""
    a = rng.normal(80, 15, size).clip(0, 255)
    h = size[0] // 4
    a[label * h:(label + 1) * h] += 120
    a = a.clip(0, 255).astype(np.uint8)
    return np.stack([a, a // 2, 255 - a], -1) if rgb else a


def write_folder(root: Path, n: int = 20, classes=("benign", "malignant"), ext="png", rgb=False,
                 sizes=((12, 12), (16, 20), (24, 14))) -> Path:
    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.fromarray(band_image(c, rng, sizes[i % len(sizes)], rgb)).save(root / name / f"{i}.{ext}")
    return root


def test_png_folder_gray_mixed_sizes_is_decoded_once_and_cached(tmp_path):
    root = write_folder(tmp_path / "xr")
    ds = datasets.load(f"folder:{root}", 8, opts(tmp_path)).validate()
    assert ds.task == "binary-class" and ds.label_names == {"0": "benign", "1": "malignant"}
    assert ds.n_channels == 1 and ds.splits["train"].images.shape[1:] == (8, 8)
    assert sum(len(s) for s in ds.splits.values()) == 40
    assert {s: len(v) for s, v in ds.splits.items()} == {"train": 28, "val": 4, "test": 8}  # 0.7/0.1/0.2 per class
    again = datasets.load(f"folder:{root}", 8, opts(tmp_path))
    assert isinstance(again.splits["train"].images, np.memmap) and again.fingerprint == ds.fingerprint
    np.testing.assert_array_equal(again.splits["test"].images, ds.splits["test"].images)
    split_csv = Path(ds.extra["split"]["file"])
    rows = list(csv.DictReader(split_csv.open()))
    assert len(rows) == 40 and {r["split"] for r in rows} == {"train", "val", "test"}
    # content, not times: touching a file keeps the fingerprint; changing a pixel changes it
    f = root / "benign" / "0.png"
    f.touch()
    assert datasets.source_for(f"folder:{root}").identity(f"folder:{root}", 8, opts(tmp_path)) == ds.fingerprint
    Image.fromarray(np.zeros((12, 12), np.uint8)).save(f)
    assert datasets.source_for(f"folder:{root}").identity(f"folder:{root}", 8, opts(tmp_path)) != ds.fingerprint


def test_jpeg_rgb_folder_with_given_splits_and_val_carved_from_train(tmp_path):
    for split, n in (("train", 20), ("test", 5)):
        write_folder(tmp_path / "derm" / split, n, classes=("akiec", "mel", "nv"), ext="jpg", rgb=True)
    ds = datasets.load(f"folder:{tmp_path / 'derm'}", 10, opts(tmp_path)).validate()
    assert ds.task == "multi-class" and ds.n_channels == 3 and ds.splits["train"].images.shape[1:] == (10, 10, 3)
    assert len(ds.splits["test"]) == 15  # the given test split, as it is
    assert len(ds.splits["train"]) + len(ds.splits["val"]) == 60 and len(ds.splits["val"]) > 0
    assert "val carved out of train" in ds.extra["split"]["rule"]


def test_csv_single_label_with_groups_and_modality(tmp_path):
    root = tmp_path / "us"
    write_folder(root / "img", 30)
    rows = [{"file": f"img/{c}/{i}.png", "dx": c, "patient": f"p{i // 3}"}
            for c in ("benign", "malignant") for i in range(30)]
    _write_csv(root / "manifest.csv", rows)
    ds = datasets.load(f"csv:{root / 'manifest.csv'}", 8, opts(tmp_path, path_col="file", label_col="dx",
                                                            group_col="patient", modality="breast ultrasound"))
    ds.validate()
    assert ds.label_names == {"0": "benign", "1": "malignant"} and ds.modality == "breast ultrasound"
    split_of = {r["path"]: r["split"] for r in csv.DictReader(open(ds.extra["split"]["file"]))}
    by_patient: dict[str, set] = {}
    for r in rows:
        by_patient.setdefault(r["patient"], set()).add(split_of[r["file"]])
    assert all(len(s) == 1 for s in by_patient.values())  # no patient in two splits


def test_csv_multilabel_and_uncertain_policy(tmp_path):
    root = tmp_path / "cx"
    write_folder(root, 20)
    rng = np.random.default_rng(1)
    rows = [{"path": f"{c}/{i}.png", "a": str(int(rng.random() < .5)), "b": str(int(c == "malignant")),
             "c": "-1" if i == 3 else str(int(rng.random() < .4))} for c in ("benign", "malignant") for i in range(20)]
    _write_csv(root / "m.csv", rows)
    ds = datasets.load(f"csv:{root / 'm.csv'}", 8, opts(tmp_path, label_col="a,b,c")).validate()
    assert ds.task == "multi-label, binary-class" and ds.label_names == {"0": "a", "1": "b", "2": "c"}
    assert ds.splits["train"].labels.shape[1] == 3
    ignored = datasets.load(f"csv:{root / 'm.csv'}", 8, opts(tmp_path, label_col="a,b,c", uncertain="ignore"))
    # ignore keeps every image; the two uncertain entries become unknown (-1), the rest as given
    assert sum(len(s) for s in ignored.splits.values()) == 40 and ignored.extra["uncertain_labels"] == 2
    assert sum(int((s.labels == -1).sum()) for s in ignored.validate().splits.values()) == 2
    with pytest.raises(UserError, match="no label column 'zz' in m.csv"):
        datasets.load(f"csv:{root / 'm.csv'}", 8, opts(tmp_path, label_col="zz"))
    # every protocol trains and scores with the unknown entries left out
    for protocol in (["--head", "linear"], ["--head", "knn"], ["--unfreeze", "all", "--epochs", "1"]):
        argv = ["run", "--backbone", "dummy", "--weights", "random", "--dataset", f"csv:{root / 'm.csv'}",
                "--label-col", "a,b,c", "--uncertain", "ignore", "--size", "8", "-q",
                "--results-dir", str(tmp_path / "r"), *protocol]
        assert main(argv) == 0, protocol


def test_grouped_split_never_puts_a_group_in_two_splits():
    rng = np.random.default_rng(3)
    entries = [Entry(Path(f"{i}"), f"{i}", (int(rng.integers(3)),), group=f"g{int(rng.integers(60))}")
               for i in range(600)]
    for seed in range(5):
        got = draw_splits(entries, (0.7, 0.1, 0.2), ("train", "val", "test"), seed)
        seen: dict[str, set] = {}
        for e, s in zip(entries, got):
            seen.setdefault(e.group, set()).add(s)
        assert all(len(v) == 1 for v in seen.values())
        counts = {s: got.count(s) for s in ("train", "val", "test")}
        assert 0.55 < counts["train"] / 600 < 0.85 and counts["val"] > 0 and counts["test"] > 0
    assert draw_splits(entries, (0.7, 0.1, 0.2), ("train", "val", "test"), 1) != \
        draw_splits(entries, (0.7, 0.1, 0.2), ("train", "val", "test"), 2)



def test_given_splits_that_share_a_patient_are_used_but_flagged(tmp_path, capsys):
    root = tmp_path / "us"
    write_folder(root / "img", 12)
    rows = [{"path": f"img/{c}/{i}.png", "dx": c, "patient": f"p{i // 4}",
             "split": ("train", "train", "val", "test")[i % 4] if i < 8 else "train"}
            for c in ("benign", "malignant") for i in range(12)]
    _write_csv(root / "m.csv", rows)
    loud = dataclasses.replace(opts(tmp_path, label_col="dx", group_col="patient", split_col="split"), quiet=False)
    ds = datasets.load(f"csv:{root / 'm.csv'}", 8, loud)
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 16, "val": 4, "test": 4}  # as given
    assert "2 group(s) in more than one split" in ds.extra["split"]["rule"]
    assert "p0, p1" in capsys.readouterr().err
    for r in rows:  # one patient per split: nothing to flag
        r["patient"] = f"{r['split']}-{r['path']}"
    _write_csv(root / "m.csv", rows)
    ds = datasets.load(f"csv:{root / 'm.csv'}", 8, loud)
    assert "group" not in ds.extra["split"]["rule"] and "more than one split" not in capsys.readouterr().err

def test_unreadable_images_a_few_skipped_more_is_one_line(tmp_path, capsys):
    root = write_folder(tmp_path / "f", 50)
    (root / "benign" / "broken.png").write_bytes(b"not a png")
    ds = datasets.load(f"folder:{root}", 8, LoadOptions(cache_dir=tmp_path / "c"))
    assert ds.extra["skipped_unreadable"] == ["benign/broken.png"]
    assert "skipping 1 unreadable image(s) of 101: benign/broken.png" in capsys.readouterr().err
    (root / "malignant" / "broken2.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"2 of 102 images are unreadable .*benign/broken.png"):
        datasets.load(f"folder:{root}", 8, LoadOptions(cache_dir=tmp_path / "c"))


def test_dicom_monochrome1_and_2_16bit_rescale_and_window(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    from bench.datasets.dicom import read_dicom

    ramp = np.tile(np.arange(0, 4000, 250, dtype=np.uint16), (16, 1))  # 16 x 16, 0..3750
    plain = _write_dicom(pydicom, tmp_path / "m2.dcm", ramp, "MONOCHROME2")
    got = read_dicom(plain)
    assert got.dtype == np.uint8 and got[0, 0] == 0 and got[0, -1] == 255  # min-max without a window
    inv = read_dicom(_write_dicom(pydicom, tmp_path / "m1.dcm", ramp, "MONOCHROME1"))
    np.testing.assert_array_equal(inv, 255 - got)
    # slope 2, intercept -1000: stored 500 -> 0; window 0 +- 500 -> stored 250..750 spans 0..255
    win = read_dicom(_write_dicom(pydicom, tmp_path / "w.dcm", ramp, "MONOCHROME2", slope=2, intercept=-1000,
                                  window=(0, 1000)))
    assert win[0, 0] == 0 and win[0, 1] == 0 and win[0, 2] == 128 and win[0, 3] == 255 and win[0, -1] == 255
    # inside a folder dataset, beside PNGs
    root = tmp_path / "ds"
    rng = np.random.default_rng(0)
    for c in (0, 1):
        (root / f"c{c}").mkdir(parents=True)
        for i in range(10):
            a = (band_image(c, rng, (16, 16)).astype(np.uint16) * 16)
            _write_dicom(pydicom, root / f"c{c}" / f"{i}.dcm", a, "MONOCHROME2" if i % 2 else "MONOCHROME1")
    ds = datasets.load(f"folder:{root}", 16, opts(tmp_path)).validate()
    assert ds.n_channels == 1 and ds.splits["train"].images.dtype == np.uint8


def test_aptos2019_layout(tmp_path):
    root = tmp_path / "aptos"
    (root / "train_images").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(50):
        grade = i % 5
        Image.fromarray(band_image(grade % 4, rng, (20, 24), rgb=True)).save(root / "train_images" / f"id{i}.png")
        rows.append({"id_code": f"id{i}", "diagnosis": str(grade)})
    _write_csv(root / "train.csv", rows)
    ds = datasets.load("aptos2019", 8, opts(tmp_path, root=root)).validate()
    assert ds.task == "ordinal-regression" and ds.label_names["4"] == "Proliferative DR"
    assert ds.modality == "fundus photography" and ds.n_channels == 3
    with pytest.raises(UserError, match=r"aptos2019: train.csv not found \(expected at .*elsewhere/train.csv"):
        datasets.load("aptos2019", 8, opts(tmp_path, root=tmp_path / "elsewhere"))


def test_isic2019_layout_groups_by_lesion(tmp_path):
    root = tmp_path / "isic"
    (root / "ISIC_2019_Training_Input").mkdir(parents=True)
    classes = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
    rng = np.random.default_rng(0)
    gt, meta = [], []
    for i in range(82):
        c = i % 8
        name = f"ISIC_{i:07d}"
        Image.fromarray(band_image(c % 3, rng, (12, 12), rgb=True)).save(root / "ISIC_2019_Training_Input" / f"{name}.jpg")
        gt.append({"image": name, **{k: "1.0" if k == classes[c] else "0.0" for k in classes},
                   "UNK": "1.0" if i >= 80 else "0.0"})
        meta.append({"image": name, "age_approx": "50", "lesion_id": f"BCN_{i // 4}" if i % 3 else ""})
    _write_csv(root / "ISIC_2019_Training_GroundTruth.csv", gt)
    _write_csv(root / "ISIC_2019_Training_Metadata.csv", meta)
    ds = datasets.load("isic2019", 8, opts(tmp_path, root=root)).validate()
    assert ds.task == "multi-class" and ds.n_outputs == 8 and sum(len(s) for s in ds.splits.values()) == 80
    split_of = {r["path"]: r["split"] for r in csv.DictReader(open(ds.extra["split"]["file"]))}
    lesions: dict[str, set] = {}
    for m in meta[:80]:
        if m["lesion_id"]:
            lesions.setdefault(m["lesion_id"], set()).add(split_of[f"ISIC_2019_Training_Input/{m['image']}.jpg"])
    assert all(len(s) == 1 for s in lesions.values())


def test_cbis_ddsm_layout_pathology_to_benign_malignant(tmp_path):
    pydicom = pytest.importorskip("pydicom")
    root = tmp_path / "cbis"
    rng = np.random.default_rng(0)
    cols = ["patient_id", "abnormality id", "pathology", "image file path"]
    for kind in ("mass", "calc"):
        for split, n in (("train", 24), ("test", 8)):
            rows = []
            for i in range(n):
                folder = f"{kind.title()}-{'Training' if split == 'train' else 'Test'}_P_{i:05d}_LEFT_CC"
                # TCIA's download names the file differently from the CSV: found by its folder
                d = root / "CBIS-DDSM" / folder / "1.2.3" / "4.5.6"
                d.mkdir(parents=True)
                malignant = i % 2
                _write_dicom(pydicom, d / "1-1.dcm", band_image(malignant, rng, (16, 12)).astype(np.uint16) * 8,
                             "MONOCHROME2")
                rel = f"{folder}/1.2.3/4.5.6/000000.dcm"
                path = ["BENIGN", "BENIGN_WITHOUT_CALLBACK"][i % 4 // 2] if not malignant else "MALIGNANT"
                rows.append({"patient_id": f"P_{i:05d}", "abnormality id": "1", "pathology": path,
                             "image file path": rel})
                if i % 4 == 0:  # a second abnormality on the same image, malignant: the image is malignant
                    rows.append({"patient_id": f"P_{i:05d}", "abnormality id": "2", "pathology": "MALIGNANT",
                                 "image file path": rel})
            _write_csv(root / f"{kind}_case_description_{split}_set.csv", rows, cols)
    ds = datasets.load("cbis-ddsm", 8, opts(tmp_path, root=root)).validate()
    assert ds.label_names == {"0": "benign", "1": "malignant"} and ds.modality == "mammography"
    assert len(ds.splits["test"]) == 16 and len(ds.splits["train"]) + len(ds.splits["val"]) == 48
    assert ds.extra["skipped_unreadable"] == []
    n_malignant = sum(int(s.labels.sum()) for s in ds.splits.values())
    assert n_malignant == 2 * (12 + 4 + 6 + 2)  # odd i, plus i % 4 == 0 with a malignant second finding


def test_chexpert_layout_5_and_14_observations_and_uncertain(tmp_path):
    from bench.datasets.paper import CHEXPERT14

    root = tmp_path / "CheXpert-v1.0-small"
    rng = np.random.default_rng(0)
    for csv_name, split, n in (("train.csv", "train", 40), ("valid.csv", "valid", 10)):
        rows = []
        for i in range(n):
            patient = i // 2 + (1000 if split == "valid" else 0)
            rel = f"CheXpert-v1.0-small/{split}/patient{patient:05d}/study1/view{i % 2 + 1}_frontal.jpg"
            (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(band_image(i % 3, rng, (16, 14))).save(tmp_path / rel)
            labs = {o: ["", "0.0", "1.0", "-1.0"][(i + k) % 4] if split == "train" else str(float((i + k) % 2))
                    for k, o in enumerate(CHEXPERT14)}
            rows.append({"Path": rel, "Sex": "F", "Age": "60", "Frontal/Lateral": "Frontal", "AP/PA": "AP", **labs})
        _write_csv(root / csv_name, rows)
    ds = datasets.load("chexpert", 8, opts(tmp_path, root=root)).validate()
    assert ds.n_outputs == 5 and ds.label_names["4"] == "Pleural Effusion" and ds.multilabel
    assert len(ds.splits["test"]) == 10  # valid.csv, radiologist-labelled, is the test split
    assert datasets.load("chexpert14", 8, opts(tmp_path, root=root)).n_outputs == 14
    ignored = datasets.load("chexpert", 8, opts(tmp_path, root=root, uncertain="ignore"))
    unknown = sum(int((s.labels == -1).sum()) for s in ignored.validate().splits.values())
    assert sum(len(s) for s in ignored.splits.values()) == 50 and unknown == ignored.extra["uncertain_labels"] > 0
    ones = datasets.load("chexpert", 8, opts(tmp_path, root=root, uncertain="ones"))
    zeros = datasets.load("chexpert", 8, opts(tmp_path, root=root, uncertain="zeros"))
    assert ones.splits["train"].labels.sum() > zeros.splits["train"].labels.sum()
    # patients never span train and val
    split_of = {r["path"]: r["split"] for r in csv.DictReader(open(ones.extra["split"]["file"]))}
    pats: dict[str, set] = {}
    for p, s in split_of.items():
        pats.setdefault(p.split("/")[2], set()).add(s)
    assert all(len(s) == 1 for s in pats.values())


def test_folder_run_scores_exactly_as_the_same_images_in_an_npz(tmp_path):
    """No resizing involved (images written at the target size): same uint8 arrays, same numbers."""
    rng = np.random.default_rng(0)
    size = 28
    arrays, root = {}, tmp_path / "own"
    for split, n in (("train", 40), ("val", 12), ("test", 16)):
        labels = np.sort(np.arange(n) % 2)  # the folder is read class by class, by name
        imgs = np.stack([band_image(int(c), rng, (size, size)) for c in labels])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, labels[:, None].astype(np.uint8)
        for i, (img, c) in enumerate(zip(imgs, labels)):
            d = root / split / ("benign" if c == 0 else "malignant")
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(d / f"{i:03d}.png")  # name order = array order
    npz_root = tmp_path / "npz"
    npz_root.mkdir()
    np.savez_compressed(npz_root / "breastmnist.npz", **arrays)
    kw = dict(weights="random", results_dir=tmp_path / "r", quiet=True, head_epochs=10, size=size)
    own = bench.run("dummy", f"folder:{root}", **kw)
    ref = bench.run("dummy", "breastmnist", data_root=npz_root, skip_md5=True, **kw)
    a = own.metrics[own.metrics.split == "test"].set_index("metric")["value"]
    b = ref.metrics[ref.metrics.split == "test"].set_index("metric")["value"]
    assert len(a) >= 4 and a.to_dict() == b.to_dict()
    meta = json.loads(next((tmp_path / "r" / "meta").glob(f"{own.run_id}.json")).read_text())
    assert meta["dataset"]["source"] == "folder" and meta["dataset"]["split"]["rule"] == "given"


def test_cli_run_on_a_csv_dataset_and_listing(tmp_path, capsys):
    root = write_folder(tmp_path / "d", 20)
    _write_csv(tmp_path / "d" / "m.csv", [{"path": f"{c}/{i}.png", "label": c} for c in ("benign", "malignant")
                                          for i in range(20)])
    argv = ["run", "--backbone", "dummy", "--weights", "random", "--dataset", f"csv:{root / 'm.csv'}",
            "--size", "16", "--results-dir", str(tmp_path / "r"), "-q", "--head", "knn", "--split-seed", "3"]
    assert main(argv) == 0, capsys.readouterr().err
    assert len(list((tmp_path / "r" / "splits").glob("*.csv"))) == 1
    assert main(["run", "--backbone", "dummy", "--dataset", "csv:/nonexistent.csv", "-q"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["run", "--backbone", "dummy", "--weights", "random", "--dataset", f"csv:{root / 'm.csv'}",
                 "--split-fractions", "0.5,0.5", "-q", "--results-dir", str(tmp_path / "r")]) == 2
    assert "--split-fractions" in capsys.readouterr().err
    assert main(["ls", "datasets"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in ("aptos2019", "isic2019", "cbis-ddsm", "chexpert14", "folder:...", "csv:..."))


def test_shipped_medmnist_files_are_the_fallback(tmp_path, capsys, monkeypatch):
    from bench.datasets import medmnist as M

    monkeypatch.setattr(M, "_TOLD", set())
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path / "empty"))  # the default root holds nothing
    ds = datasets.load("breastmnist", 28, LoadOptions(download=False))
    assert ds.path.parent.name == "medmnist" and len(ds.splits["train"]) == 546
    assert "using the copy shipped with medfm-bench" in capsys.readouterr().err
    assert datasets.source_for("breastmnist").missing("breastmnist", 28, LoadOptions()) == []
    # a data root the user names gets no stand-in: the file is missing there
    assert datasets.source_for("breastmnist").missing("breastmnist", 28, LoadOptions(root=tmp_path)) == ["breastmnist.npz"]
    assert datasets.all_names() == datasets.source_for("breastmnist").names()  # own data is never `all`
    assert main(["ls", "datasets", "--wide"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines() if line.strip()}
    assert "28 (shipped)" in rows["breastmnist"] and "28 (shipped)" in rows["retinamnist"]
    assert "(shipped)" not in rows["pneumoniamnist"]



def test_retinamnist_ships_in_parts_and_is_joined_md5_checked(tmp_path, monkeypatch, capsys):
    from bench.datasets import medmnist as M

    monkeypatch.setenv("BENCH_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(M, "_SHIPPED", {})
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path / "empty"))  # the default root holds nothing
    ds = datasets.load("retinamnist", 28, LoadOptions(download=False))
    assert {k: len(v) for k, v in ds.splits.items()} == {"train": 1080, "val": 120, "test": 400}
    joined = tmp_path / "cache" / "samples" / "retinamnist.npz"
    assert ds.path == joined and M.md5sum(joined) == M.expected_md5("retinamnist", 28)
    # a damaged joined copy is not used: it is joined again from the parts
    joined.write_bytes(b"not a zip")
    monkeypatch.setattr(M, "_SHIPPED", {})
    assert M.shipped("retinamnist", 28) == joined and M.md5sum(joined) == M.expected_md5("retinamnist", 28)
    assert M.shipped("pathmnist", 28) is None  # nothing shipped for it

def _write_csv(path: Path, rows: list[dict], cols: list[str] | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols or list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def _write_dicom(pydicom, path: Path, pixels: np.ndarray, photometric: str, slope: float = 1.0,
                 intercept: float = 0.0, window: tuple[float, float] | None = None) -> Path:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def test_sweep_and_report_over_a_folder_dataset(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for c in ("benign", "malignant"):
        d = tmp_path / "img" / c
        d.mkdir(parents=True)
        for i in range(30):
            x = rng.integers(0, 80, (40, 36), dtype=np.uint8)
            if c == "malignant":
                x[:18] += 120
            Image.fromarray(x).save(d / f"{i}.png")
    out = tmp_path / "r"
    argv = ["sweep", "--backbone", "dummy", "--weights", "random", "--dataset", f"folder:{tmp_path / 'img'}",
            "--head", "linear", "knn", "--seed", "0", "1", "--head-epochs", "10", "--results-dir", str(out)]
    assert main(argv) == 0
    assert "4 done" in capsys.readouterr().out
    assert main(argv) == 0 and "0 done, 4 already done" in capsys.readouterr().out  # resumed by id
    assert len(list((out / "splits").glob("*.csv"))) == 1  # one split, saved once, shared by the runs
    assert main(["report", "--results-dir", str(out), "--out", str(tmp_path / "rep"), "--format", "md",
                 "--n-boot", "20"]) == 0
    md = (tmp_path / "rep" / "report.md").read_text()
    assert f"folder:{tmp_path / 'img'}" in md and "dummy (random) (test model)" in md
