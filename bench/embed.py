"""`bench embed` / ``bench.embed``: a frozen backbone's features of every image of a dataset, out of
the tool (to train your own heads, plot a UMAP, audit), straight from the feature cache.

The features are exactly those the probes read (``--head linear``'s frozen pass: the same
preprocessing, readout, precision and cache key, bench.context.feature_parts), so what is cached is
read and only what is missing is extracted (and cached for later runs). ``--layers`` gives the
pooled readout after each chosen block (the layer-wise probe's pass, bench.protocols.layers).

Per split: ``ids`` (each image's id: own data, its path as the manifest names it; MedMNIST,
``<split>/<index>``), ``labels`` (class indices, or (N, L) 0/1 for multi-label, -1 unknown) and
``features`` (N, D) float32, or with ``--layers`` one ``layer_<k>`` array per block k. Files:

* ``.npz``: ``<split>_ids``, ``<split>_labels``, ``<split>_features`` (or ``<split>_layer_<k>``),
  the MedMNIST naming of arrays per split;
* ``.parquet``: one row per image: ``image_id``, ``split``, ``label`` (multi-label: ``label_<k>``)
  and a list column ``features`` (or ``layer_<k>``): ``np.stack(df.features)`` is the matrix.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .datasets import SPLITS
from .errors import UserError

if TYPE_CHECKING:
    import pandas as pd

    from .run_config import RunOptions

FORMATS = (".npz", ".parquet")


def check_out(out: Path | None) -> None:
    """A file name this can write (one line before anything is extracted)."""
    if out is None:
        return
    from .fsio import check_creatable

    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--out {out}: use a .npz or .parquet file name")
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; give a file name ending in .npz or .parquet")
    check_creatable(out.parent, "embeddings folder", "--out")


def embed(backbone: str, dataset: str, opts: "RunOptions", *, splits: Sequence[str] = SPLITS,
          **run: Any) -> dict[str, dict[str, np.ndarray]]:
    """Per split: ``ids``, ``labels`` and ``features`` (or ``layer_<k>`` per block with ``layers``).
    ``run``: the run options that shape the features (variant, weights, readout, size, input_size,
    resize, normalize, gray, precision, seed, limit, layers, the data options...)."""
    from . import assemble
    from .resolve import bind_data, resolve

    bad = [s for s in splits if s not in SPLITS]
    if bad or not splits:
        raise UserError(f"--splits {','.join(splits)}: choose from {', '.join(SPLITS)}")
    for fixed in ("head", "unfreeze"):
        if run.get(fixed) not in (None, "linear" if fixed == "head" else "none"):
            raise UserError(f"bench embed reads the frozen backbone's features; drop --{fixed}")
    cfg = bind_data(resolve(backbone, dataset, **{**run, "head": "linear", "unfreeze": "none"}), opts)
    ctx = assemble.open_context(cfg, opts)
    ds = ctx.source or ctx.dataset
    out: dict[str, dict[str, np.ndarray]] = {s: {"ids": ds.image_ids(s), "labels": ds.targets(s)} for s in splits}
    if cfg.layers:
        from .protocols.layers import extract_layers, layer_what, parse_layers

        layers = parse_layers(cfg.layers, ctx.model.num_blocks)
        extract_layers(ctx, layers)  # what the cache lacks, in one pass per split
        for s in splits:
            for k in layers:
                feats = ctx.cache.read(ctx.feature_parts(s, layer_what(k, ctx.model.num_blocks)),
                                       rows=len(ds.splits[s]))
                if feats is None:
                    raise RuntimeError(f"layer {k} {s} features vanished from the cache ({ctx.cache.root})")
                out[s][f"layer_{k}"] = np.asarray(feats, dtype=np.float32)
    else:
        for s in splits:
            out[s]["features"] = np.asarray(ctx.readout_features(s), dtype=np.float32)
    return out


def to_frame(emb: dict[str, dict[str, np.ndarray]]) -> "pd.DataFrame":
    """One row per image: image_id, split, label(s), and one list column per feature array."""
    import pandas as pd

    frames = []
    for split, arrays in emb.items():
        n = len(arrays["ids"])
        cols: dict[str, Any] = {"image_id": arrays["ids"], "split": [split] * n}
        labels = np.asarray(arrays["labels"])
        if labels.ndim == 2:
            cols.update({f"label_{k}": labels[:, k] for k in range(labels.shape[1])})
        else:
            cols["label"] = labels
        for name, a in arrays.items():
            if name not in ("ids", "labels"):
                cols[name] = list(a)
        frames.append(pd.DataFrame(cols))
    return pd.concat(frames, ignore_index=True)


def write(emb: dict[str, dict[str, np.ndarray]], out: Path) -> Path:
    """``out`` (.npz or .parquet), written whole or not at all."""
    from .fsio import atomic_write_bytes

    out = Path(out)
    check_out(out)
    buf = io.BytesIO()
    if out.suffix.lower() == ".npz":
        np.savez(buf, **{f"{s}_{k}": v for s, arrays in emb.items() for k, v in arrays.items()})
    else:
        try:
            to_frame(emb).to_parquet(buf, index=False)
        except ImportError:
            raise UserError("writing .parquet needs pyarrow (pip install pyarrow); or use --out FILE.npz") from None
    atomic_write_bytes(out, buf.getvalue(), "embeddings")
    return out


def summary(emb: dict[str, dict[str, np.ndarray]]) -> str:
    """``train 96 x 32, val 32 x 32, test 48 x 32`` (the first feature array of each split)."""
    parts = []
    for s, arrays in emb.items():
        feats = [v for k, v in arrays.items() if k not in ("ids", "labels")]
        parts.append(f"{s} {feats[0].shape[0]} x {feats[0].shape[1]}" + (f" ({len(feats)} layers)" if len(feats) > 1
                                                                         else ""))
    return ", ".join(parts)


__all__ = ["embed", "write", "to_frame", "check_out", "summary", "FORMATS"]
