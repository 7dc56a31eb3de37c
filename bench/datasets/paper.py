"""The paper's four datasets (Huix et al.) in their official download layouts, as thin subclasses
of the CSV source. ``--data-root`` points at the unpacked download; nothing is downloaded (each
needs a registration), and a missing file is one line naming it and where it was expected.

  aptos2019   train.csv (id_code, diagnosis 0-4) + train_images/<id_code>.png; ordinal, 5 grades.
              No split is given: seeded, stratified 0.7/0.1/0.2 (--split-fractions).
  isic2019    ISIC_2019_Training_GroundTruth.csv (image, one-hot MEL NV BCC AK BKL DF VASC SCC UNK;
              UNK is empty in the training set and dropped, with any row marked UNK) +
              ISIC_2019_Training_Input/<image>.jpg; ISIC_2019_Training_Metadata.csv's lesion_id
              groups the split (images of one lesion never in two splits); 8 classes.
  cbis-ddsm   the description CSVs ({mass,calc}_case_description_{train,test}_set.csv): one row per
              abnormality, one image per 'image file path'; malignant when any abnormality of the
              image is MALIGNANT, else benign (BENIGN, BENIGN_WITHOUT_CALLBACK). Given train/test;
              val carved out of train, grouped by patient_id. The image is the path as written
              under the root (or under root/CBIS-DDSM/), else the one .dcm below its first folder
              (TCIA's download renames the files the CSVs name).
  chexpert    train.csv + valid.csv (Path relative to the folder above the root, or to the root);
  chexpert14  the 5 competition observations (Atelectasis, Cardiomegaly, Consolidation, Edema,
              Pleural Effusion) or all 14; -1 (uncertain) by --uncertain ones|zeros|ignore, blank 0;
              valid.csv (radiologist-labelled) is the test split, val is carved out of train,
              grouped by patient.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from .base import LoadOptions
from .images import Entry, Manifest, infer_task
from .manifest import CSVSource, read_rows

ISIC_CLASSES = ("MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC")
CHEXPERT5 = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
CHEXPERT14 = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
              "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
              "Fracture", "Support Devices")
APTOS_GRADES = ("No DR", "Mild", "Moderate", "Severe", "Proliferative DR")


class PaperSource(CSVSource):
    n_out = 0
    files: tuple[str, ...] = ()      # what must be under the data root
    modality_name = ""

    def names(self) -> list[str]:
        return [self.name]

    def owns(self, dataset: str) -> bool:
        return dataset in self.names()

    def check(self, dataset: str, size: int) -> None:
        pass  # the data root is only known at run time

    def root(self, dataset: str, opts: LoadOptions) -> Path:
        if opts.root is None:
            raise UserError(f"{dataset}: pass --data-root, the folder of the unpacked official download "
                            f"(it holds {', '.join(self.files)})")
        root = Path(opts.root)
        for f in self.files:
            if not (root / f).exists():
                raise UserError(f"{dataset}: {f} not found (expected at {root / f}; --data-root is the "
                                f"unpacked official download)")
        return root

    def n_classes(self, dataset: str) -> int:
        return self.n_out

    def modality(self, dataset: str) -> str:
        return self.modality_name

    def missing(self, dataset: str, size: int, opts: LoadOptions) -> list[str]:
        root = Path(opts.root) if opts.root else None
        return [f for f in self.files if root is None or not (root / f).exists()]

    def list_rows(self, root: Path | None) -> list[list[str]]:
        local = "yes" if root and all((Path(root) / f).exists() for f in self.files) else "-"
        return [[n, self.task_name(n), str(self.n_classes(n)), "", "", "", "", local,
                 f"{self.name} (--data-root: the official download)"] for n in self.names()]

    def task_name(self, dataset: str) -> str:
        return "multi-class"


class Aptos(PaperSource):
    name, n_out, files, modality_name = "aptos2019", 5, ("train.csv", "train_images"), "fundus photography"
    description = "APTOS 2019 blindness detection: train.csv + train_images/"

    def task_name(self, dataset: str) -> str:
        return "ordinal-regression"

    def manifest(self, dataset: str, opts: LoadOptions) -> Manifest:
        root = self.root(dataset, opts)
        _, rows = read_rows(root / "train.csv", dataset)
        entries = []
        for n, r in enumerate(rows, 2):
            grade = (r.get("diagnosis") or "").strip()
            if grade not in ("0", "1", "2", "3", "4"):  # the grade itself is the class index
                raise UserError(f"{dataset}: train.csv line {n}: diagnosis {grade!r} is not a grade 0-4")
            rel = f"train_images/{r['id_code'].strip()}.png"
            entries.append(Entry(root / rel, rel, (int(grade),)))
        task = "ordinal-regression" if opts.get("task") == "auto" else infer_task(5, False, opts.get("task"), dataset)
        return Manifest(dataset, self.name, root, entries, {str(i): g for i, g in enumerate(APTOS_GRADES)}, task,
                        modality=self.modality_name, files=[root / "train.csv"])


class ISIC(PaperSource):
    name, n_out, modality_name = "isic2019", 8, "dermatoscopy"
    files = ("ISIC_2019_Training_GroundTruth.csv", "ISIC_2019_Training_Input", "ISIC_2019_Training_Metadata.csv")
    description = "ISIC 2019: ground-truth CSV (one-hot), metadata (lesion_id), ISIC_2019_Training_Input/"

    def manifest(self, dataset: str, opts: LoadOptions) -> Manifest:
        root = self.root(dataset, opts)
        gt = root / self.files[0]
        cols, rows = read_rows(gt, dataset)
        _, meta = read_rows(root / self.files[2], dataset)
        lesion = {r["image"]: (r.get("lesion_id") or "").strip() for r in meta}
        entries = []
        for n, r in enumerate(rows, 2):
            if float(r.get("UNK") or 0) == 1:
                continue
            hot = [float(r[c]) for c in ISIC_CLASSES]
            if sum(hot) != 1:
                raise UserError(f"{dataset}: {gt.name} line {n} is not one-hot over {', '.join(ISIC_CLASSES)}")
            rel = f"{self.files[1]}/{r['image']}.jpg"
            entries.append(Entry(root / rel, rel, (hot.index(1.0),), None, lesion.get(r["image"]) or None))
        return Manifest(dataset, self.name, root, entries, {str(i): c for i, c in enumerate(ISIC_CLASSES)},
                        infer_task(8, False, opts.get("task"), dataset),
                        modality=self.modality_name, files=[gt, root / self.files[2]])

    def attributes(self, dataset: str, opts: LoadOptions, ids: "set[str] | None" = None):
        """The metadata CSV's columns (age_approx, anatom_site_general, lesion_id, sex) per image."""
        from .attributes import from_rows

        root = self.root(dataset, opts)
        _, meta = read_rows(root / self.files[2], dataset)
        return from_rows([f"{self.files[1]}/{(r.get('image') or '').strip()}.jpg" for r in meta], meta,
                         skip=("image",), wanted=ids)


class CBIS(PaperSource):
    name, n_out, modality_name = "cbis-ddsm", 2, "mammography"
    files = ("mass_case_description_train_set.csv", "mass_case_description_test_set.csv",
             "calc_case_description_train_set.csv", "calc_case_description_test_set.csv")
    description = "CBIS-DDSM: the four case description CSVs + the DICOM folders"

    def task_name(self, dataset: str) -> str:
        return "binary-class"

    @staticmethod
    def _image(root: Path, rel: str) -> Path:
        for base in (root, root / "CBIS-DDSM"):
            if (base / rel).is_file():
                return base / rel
        first = rel.split("/")[0]
        for base in (root, root / "CBIS-DDSM"):
            found = sorted((base / first).rglob("*.dcm")) if (base / first).is_dir() else []
            if len(found) == 1:
                return found[0]
        return root / rel  # not there: listed as unreadable with this path

    def manifest(self, dataset: str, opts: LoadOptions) -> Manifest:
        root = self.root(dataset, opts)
        images: dict[str, dict] = {}
        for f in self.files:
            cols, rows = read_rows(root / f, dataset)
            split = "train" if "train" in f else "test"
            for n, r in enumerate(rows, 2):
                rel = (r.get("image file path") or "").strip().strip('"')
                p = (r.get("pathology") or "").strip().upper()
                if p not in ("MALIGNANT", "BENIGN", "BENIGN_WITHOUT_CALLBACK"):
                    raise UserError(f"{dataset}: {f} line {n}: pathology {p!r} is not MALIGNANT, BENIGN or "
                                    f"BENIGN_WITHOUT_CALLBACK")
                img = images.setdefault(rel, {"malignant": 0, "split": split, "patient": r.get("patient_id")})
                img["malignant"] |= p == "MALIGNANT"
        entries = [Entry(self._image(root, rel), rel, (int(v["malignant"]),), v["split"], v["patient"])
                   for rel, v in sorted(images.items())]
        return Manifest(dataset, self.name, root, entries, {"0": "benign", "1": "malignant"}, "binary-class",
                        modality=self.modality_name, files=[root / f for f in self.files])


class CheXpert(PaperSource):
    name, modality_name = "chexpert", "chest x-ray"
    files = ("train.csv", "valid.csv")
    description = "CheXpert: train.csv + valid.csv (5 competition observations; chexpert14: all 14)"

    def names(self) -> list[str]:
        return ["chexpert", "chexpert14"]

    def n_classes(self, dataset: str) -> int:
        return 14 if dataset == "chexpert14" else 5

    def task_name(self, dataset: str) -> str:
        return "multi-label, binary-class"

    @staticmethod
    def _base(root: Path, rel: str) -> tuple[Path, str]:
        first, _, rest = rel.partition("/")
        if first == root.name or not (root / rel).exists() and (root.parent / rel).exists():
            return root.parent, rel
        if (root / rel).exists():
            return root, rel
        return root, rest if first.lower().startswith("chexpert") else rel

    def attributes(self, dataset: str, opts: LoadOptions, ids: "set[str] | None" = None):
        """train.csv's and valid.csv's columns other than Path and the observations (Sex, Age,
        Frontal/Lateral, AP/PA) per image, named as the manifest names them."""
        from .attributes import from_rows

        root = self.root(dataset, opts)
        names, rows = [], []
        for f in ("train.csv", "valid.csv"):
            _, got = read_rows(root / f, dataset)
            for r in got:
                base, rel = self._base(root, (r.get("Path") or "").strip())
                names.append((base / rel).resolve().relative_to(root.resolve().parent).as_posix())
                rows.append(r)
        return from_rows(names, rows, skip=("Path", *CHEXPERT14), wanted=ids)

    def manifest(self, dataset: str, opts: LoadOptions) -> Manifest:
        root = self.root(dataset, opts)
        labels = list(CHEXPERT14 if dataset == "chexpert14" else CHEXPERT5)
        entries, n_uncertain, cols = [], 0, []
        for f, split in (("train.csv", "train"), ("valid.csv", "test")):
            cols, rows = read_rows(root / f, dataset)
            for r in rows:
                r["split"] = split
                base, rel = self._base(root, r["Path"].strip())
                r["Path"] = str(base / rel)
                m = re.search(r"(patient\d+)", rel)
                r["patient"] = m.group(1) if m else rel
            part = self.rows_manifest(dataset, root / f, root, cols + ["split", "patient"], rows, opts,
                                      path_col="Path", label_cols=labels, split_col="split", group_col="patient")
            for e in part.entries:  # names in the fingerprint do not depend on where the root is
                e.rel = Path(e.path).resolve().relative_to(root.resolve().parent).as_posix()
            entries += part.entries
            n_uncertain += part.extra["uncertain_labels"]
        return Manifest(dataset, self.name, root, entries, {str(i): n for i, n in enumerate(labels)},
                        "multi-label, binary-class", modality=self.modality_name,
                        files=[root / f for f in self.files],
                        extra={"uncertain": opts.get("uncertain"), "uncertain_labels": n_uncertain})


APTOS, ISIC, CBIS, CHEXPERT = Aptos(), ISIC(), CBIS(), CheXpert()
