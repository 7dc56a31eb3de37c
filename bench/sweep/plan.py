"""From grid points to a plan: validated run configs, extraction groups, bundles, shards, status.

A *group* is the set of probe runs that read the same frozen features (same backbone, variant,
weights, readout, input size, resize, gray policy, dataset, size and limit): its first run
extracts, the others hit the cache (trained runs on the same frozen prefix group likewise). A
*bundle* is what one worker runs in sequence: a whole group, or a single run. Bundles are assigned to shards/tasks by a deterministic
longest-first rule over the *full* plan, so every shard computes the same split.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..run_config import RunConfig, RunOptions
from ..protocol import SplitSizes
from ..errors import UserError
from .grid import describe

GROUPS_SHOWN = 12  # groups a dry run lists without --list


def resolve_points(points: list[dict]) -> tuple[list[RunConfig], int]:
    """Validate every point with bench.resolve (fail fast, one line); drop duplicates.

    Returns (configs in grid order, number of points that collapsed onto an earlier run id, e.g.
    head_epochs listed for a kNN run)."""
    from ..resolve import resolve, unread

    out: dict[str, RunConfig] = {}
    ignored: dict[str, dict[str, RunConfig]] = {}  # option -> run id -> a run that does not read it
    for point in points:
        p = dict(point)
        backbone, dataset = p.pop("backbone", None), p.pop("dataset", None)
        if not backbone or not dataset:
            raise UserError("a sweep needs backbones and datasets (--backbone/--dataset or backbones:/datasets: "
                            "in the YAML)")
        p = {k: v for k, v in p.items() if v is not None}
        try:
            cfg = resolve(backbone, dataset, **p)
        except UserError as e:
            raise UserError(f"{e} [in sweep point {describe(point)}]") from None
        out.setdefault(cfg.run_id, cfg)
        for k in unread(cfg, p):
            ignored.setdefault(k, {})[cfg.run_id] = cfg
    warn_unread(ignored, len(out))
    return list(out.values()), len(points) - len(out)


def warn_unread(ignored: dict[str, dict[str, RunConfig]], n_runs: int) -> None:
    """One line per option the sweep sets that some of its runs' protocols do not read (a recipe's
    values are not set by the sweep, so never warned about)."""
    from ..options import get
    from ..progress import log

    for k, runs in ignored.items():
        protocols = ", ".join(sorted({f"--head {c.head}" + (f" --unfreeze {c.unfreeze}" if c.unfreeze != "none" else "")
                                      for c in runs.values()}))
        if len(runs) >= n_runs:
            log(f"warning: {get(k).flag} is not read by any run of this sweep ({protocols}): ignored, and not "
                f"part of any run id")
        else:
            log(f"warning: {get(k).flag} is not read by {len(runs)} of the sweep's {n_runs} runs ({protocols}): "
                f"ignored there, and not part of their run ids")


def group_key(cfg: RunConfig) -> tuple:
    """Runs with equal keys share one frozen computation (the protocol's ``shares``), so they are
    bundled and run in sequence; a run that shares nothing is its own group. Only scheduling
    depends on this."""
    return cfg.protocol.shares(cfg) or ("run", cfg.run_id)


def group_id(key: tuple) -> str:
    return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()[:8]


def group_label(cfg: RunConfig) -> str:
    w = cfg.weights if cfg.weights in ("default", "random") else Path(cfg.weights).name
    what = ("readout features" + (" (and per-layer ones)" if cfg.layers else "") if cfg.is_probe
            else f"frozen prefix (head {cfg.head}, unfreeze {cfg.unfreeze})")
    return (f"{what}: {cfg.backbone}/{cfg.variant} weights={w} readout={cfg.readout} in={cfg.input_size} "
            f"{cfg.resize} gray={cfg.gray} {cfg.dataset}_{cfg.size}" + (f" limit={cfg.limit}" if cfg.limit else ""))


# what planning asks per config but depends only on the dataset, the backbone or the bundle:
# computed once per plan (Plan.build clears it) and per registry generation (bench.registry)
_MEMO: dict[tuple, object] = {}


def _memo(key: tuple, compute):
    from ..registry import generation

    key = (generation(), *key)
    if key not in _MEMO:
        _MEMO[key] = compute()
    return _MEMO[key]


def split_sizes(cfg: RunConfig) -> SplitSizes:
    """Images per split of a run, from its source (1/1/1 where the source cannot say)."""
    from .. import datasets

    from .. import subsets

    src = datasets.source_for(cfg.dataset)
    n = _memo(("n_samples", cfg.dataset, cfg.size), lambda: src.n_samples(cfg.dataset, cfg.size)) \
        or {"train": 1, "val": 1, "test": 1}
    if cfg.limit:
        n = {k: min(v, cfg.limit) for k, v in n.items()}
    if not subsets.active(cfg):
        return SplitSizes(n["train"], n["val"], n["test"])
    # --train-fraction / --shots: training sees the subset; frozen passes still cover the whole split
    classes = _memo(("n_classes", cfg.dataset), lambda: src.n_classes(cfg.dataset))
    trained = subsets.expected_size(n["train"], classes, cfg.train_fraction or 1.0, cfg.shots or 0)
    return SplitSizes(trained, n["val"], n["test"], full_train=n["train"])


def num_blocks(cfg: RunConfig) -> int:
    def blocks() -> int:
        import backbones

        n = backbones.get(cfg.backbone).spec.facts.get("blocks")
        return int(n) if isinstance(n, int) or str(n).isdigit() else 12

    return _memo(("blocks", cfg.backbone), blocks)  # type: ignore[return-value]


def cost(bundle: list[RunConfig]) -> float:
    """Backbone image passes of a bundle: its shared frozen work once, then each run's own."""
    def compute() -> float:
        first = bundle[0]
        shared = first.protocol.shared_cost(first, split_sizes(first), num_blocks(first))
        return shared + sum(c.protocol.cost(c, split_sizes(c), num_blocks(c)) for c in bundle)

    return _memo(("cost", *(c.run_id for c in bundle)), compute)  # type: ignore[return-value]


def make_bundles(cfgs: list[RunConfig]) -> list[list[RunConfig]]:
    """One bundle per extraction group (runs in a stable order), longest first."""
    groups: dict[tuple, list[RunConfig]] = {}
    for c in cfgs:
        groups.setdefault(group_key(c), []).append(c)
    bundles = [sorted(g, key=lambda c: (c.head, c.seed, c.run_id)) for g in groups.values()]
    return sorted(bundles, key=lambda b: (-cost(b), b[0].run_id))


def assign(bundles: list[list[RunConfig]], n: int) -> list[list[list[RunConfig]]]:
    """Longest-processing-time-first: each bundle to the currently lightest of n parts."""
    parts: list[list[list[RunConfig]]] = [[] for _ in range(n)]
    load = [0] * n
    for b in sorted(bundles, key=lambda b: (-cost(b), b[0].run_id)):
        i = min(range(n), key=lambda j: (load[j], j))
        parts[i].append(b)
        load[i] += cost(b)
    return parts


def parse_shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(x) for x in str(text).split("/"))
    except ValueError:
        raise UserError(f"--shard {text!r}: expected I/N, e.g. 0/4 (0 <= I < N)") from None
    if n < 1 or not 0 <= i < n:
        raise UserError(f"--shard {text}: need 0 <= I < N (shards are numbered from 0, like SLURM_PROCID)")
    return i, n


# -- status at plan time ---------------------------------------------------------------------------

@dataclass
class Status:
    done: set[str] = field(default_factory=set)
    failed: dict[str, int] = field(default_factory=dict)  # run_id -> failure file mtime_ns
    environment: set[str] = field(default_factory=set)   # failures of the machine: retried anyway

    @classmethod
    def scan(cls, results_dir: Path, cfgs: list[RunConfig]) -> "Status":
        from ..results import ResultStore

        store = ResultStore(results_dir)
        st = cls()
        for c in cfgs:
            if store.is_done(c.run_id):
                st.done.add(c.run_id)
                continue
            f = store.failures / f"{c.run_id}.json"
            try:
                st.failed[c.run_id] = f.stat().st_mtime_ns
            except FileNotFoundError:
                continue
            if store.failure_kind(c.run_id) == "environment":
                st.environment.add(c.run_id)
        return st

    def pending(self, cfg: RunConfig, retry_failed: bool) -> bool:
        return cfg.run_id not in self.done and (retry_failed or cfg.run_id not in self.failed
                                                or cfg.run_id in self.environment)


# -- frozen feature cache status -------------------------------------------------------------------

def known_weights_ids(results_dir: Path) -> dict[tuple[str, str], str]:
    """(backbone, variant) -> weights_id of --weights default, learned from finished runs' JSON.

    The id of default weights is only known to the adapter once it has built the model; rather than
    building (and downloading) models for a dry run, reuse what earlier runs recorded."""
    from ..results import ResultStore

    store = ResultStore(results_dir)
    out: dict[tuple[str, str], str] = {}
    for rid in store.run_ids():
        try:
            meta = json.loads(store.path("meta", rid).read_text())
            c = meta["config"]
            if c.get("weights") == "default":
                out[(c["backbone"], c["variant"])] = meta["backbone"]["weights_id"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return out


def weights_key_for(cfg: RunConfig, known: dict[tuple[str, str], str]) -> str | None:
    """What RunContext.weights_key would be for this config's model, without building it."""
    from ..context import weights_key

    if cfg.weights == "random":
        wid: str | None = "random"
    elif cfg.weights != "default":
        wid = cfg.weights_fingerprint  # adapters fingerprint a weights file the same way
    else:
        wid = known.get((cfg.backbone, cfg.variant))
        if wid is None:
            import backbones

            hook = getattr(backbones.get(cfg.backbone), "default_weights_id", None)
            wid = hook(cfg.variant) if callable(hook) else None
    return None if wid is None else weights_key(cfg, wid)


def data_fingerprint(cfg: RunConfig, opts: RunOptions, memo: dict) -> str | None:
    from .. import datasets

    lo = datasets.load_options(cfg, opts, download=False)
    k = (cfg.dataset, cfg.size, lo)  # the data options (split seed...) change an own dataset's fingerprint
    if k not in memo:
        memo[k] = datasets.source_for(cfg.dataset).expected_fingerprint(cfg.dataset, cfg.size, lo)
    return memo[k]


def features_cached(cfg: RunConfig, opts: RunOptions, known: dict, md5_memo: dict) -> bool | None:
    """True/False when the train/val/test features of this probe run are/aren't cached; None if
    that cannot be known yet (default weights never run here, or the dataset file is missing)."""
    from ..context import feature_parts
    from ..datasets import SPLITS
    from ..cache import FeatureCache
    from ..env import default_cache_dir
    from ..features import precision
    from ..assemble import pick_device

    wkey, fp = weights_key_for(cfg, known), data_fingerprint(cfg, opts, md5_memo)
    if wkey is None or fp is None:
        return None
    cache = FeatureCache(Path(opts.cache_dir or default_cache_dir()))
    prec = precision(pick_device(opts.device), cfg.precision)
    from ..execution import cache_parts

    return all(cache.exists(feature_parts(cfg, wkey, fp, s, precision=prec, execution=cache_parts(opts)))
               for s in SPLITS)


# -- the plan --------------------------------------------------------------------------------------

@dataclass
class Plan:
    runs: list[RunConfig]           # this shard's runs, grid order
    bundles: list[list[RunConfig]]  # this shard's bundles
    total: int                      # runs in the whole grid (all shards)
    collapsed: int                  # grid points that were duplicates of another run
    shard: tuple[int, int] = (0, 1)

    @classmethod
    def build(cls, points: list[dict], shard: tuple[int, int] = (0, 1), opts: RunOptions | None = None) -> "Plan":
        """``opts``: where the data is, so each run id carries the identity of the data it will read."""
        _MEMO.clear()  # sizes and costs are read again for every plan (files may have changed)
        cfgs, collapsed = resolve_points(points)
        if opts is not None:
            cfgs = list({c.run_id: c for c in bind_all(cfgs, opts)}.values())
        bundles = make_bundles(cfgs)
        i, n = shard
        mine = assign(bundles, n)[i] if n > 1 else bundles
        ids = {c.run_id for b in mine for c in b}
        return cls([c for c in cfgs if c.run_id in ids], mine, len(cfgs), collapsed, shard)


def bind_all(cfgs: list[RunConfig], opts: RunOptions) -> list[RunConfig]:
    """``bind_data`` of every config, the data's identity asked once per dataset, size, limit and
    data options (all it depends on besides ``opts``), not once per run."""
    from ..options import DATA_OPTIONS
    from ..resolve import bind_data

    seen: dict[tuple, str] = {}
    out = []
    for c in cfgs:
        key = (c.dataset, c.size, c.limit, tuple(getattr(c, k) for k in DATA_OPTIONS))
        if key not in seen:
            bound = bind_data(c, opts)
            seen[key] = bound.data_fingerprint
            out.append(bound)
        else:  # (a published dataset's identity is "", as the config has it already)
            out.append(c if c.data_fingerprint == seen[key] else c.replace(data_fingerprint=seen[key]))
    return out


def summarize(plan: Plan, opts: RunOptions, retry_failed: bool) -> dict:
    """Everything --dry-run reports, as plain data (printed as text or --json)."""
    from .. import datasets

    st = Status.scan(opts.results_dir, plan.runs)
    known = known_weights_ids(opts.results_dir)
    memo: dict = {}
    groups = []
    for b in plan.bundles:
        kind = group_key(b[0])[0]
        if kind == "run":
            continue
        # cache status is known for readout features; a prefix's depth needs the built model
        cached = features_cached(b[0], opts, known, memo) if kind == "features" else None
        groups.append({"group": group_id(group_key(b[0])), "kind": kind, "label": group_label(b[0]),
                       "cached": cached, "runs": [c.run_id for c in b], "done": sum(c.run_id in st.done for c in b)})
    missing = sorted({name for c in {(c.dataset, c.size): c for c in plan.runs}.values()
                      for name in datasets.source_for(c.dataset).missing(c.dataset, c.size,
                                                                         datasets.load_options(c, opts, download=False))})
    root = opts.data_root or "each dataset source's default folder"
    runs = []
    for c in plan.runs:
        state = "done" if c.run_id in st.done else "failed" if c.run_id in st.failed else "todo"
        key = group_key(c)
        runs.append({"run_id": c.run_id, "status": state, "probe": c.is_probe,
                     "group": group_id(key) if key[0] != "run" else None})
    from ..recipes import get as recipe

    recipes_used = {c.recipe for c in plan.runs}
    return {
        "runs": len(plan.runs), "grid_runs": plan.total, "collapsed_points": plan.collapsed,
        "recipes": {name: recipe(name).values() for name in sorted(recipes_used)},
        "shard": f"{plan.shard[0]}/{plan.shard[1]}",
        "done": len(st.done), "failed": len(st.failed),
        "to_run": sum(st.pending(c, retry_failed) for c in plan.runs),
        "probe_runs": sum(c.is_probe for c in plan.runs), "trained_runs": sum(not c.is_probe for c in plan.runs),
        "feature_groups": sum(g["kind"] == "features" for g in groups),
        "features_cached": sum(g["cached"] is True for g in groups if g["kind"] == "features"),
        "features_unknown": sum(g["cached"] is None for g in groups if g["kind"] == "features"),
        "prefix_groups": sum(g["kind"] == "prefix" for g in groups),
        "missing_data_files": missing, "data_root": str(root), "results_dir": str(opts.results_dir),
        "image_passes": image_passes(plan.bundles), "groups": groups, "run_list": runs,
    }


def _count(n: float) -> str:
    return f"{n / 1e9:.2f}G" if n >= 1e9 else f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else f"{n:.0f}"


def image_passes(bundles: list[list[RunConfig]]) -> dict[str, float]:
    """The cost model's backbone image passes per backbone (each bundle's shared frozen work once)."""
    out: dict[str, float] = {}
    for b in bundles:
        out[b[0].backbone] = out.get(b[0].backbone, 0.0) + cost(b)
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def print_summary(s: dict, list_runs: bool, extra: list[str]) -> None:
    shard = "" if s["shard"] == "0/1" else f" (shard {s['shard']} of a {s['grid_runs']}-run grid)"
    print(f"sweep: {s['runs']} runs{shard}: {s['probe_runs']} probes on frozen features, "
          f"{s['trained_runs']} trained" + (f"; {s['collapsed_points']} grid points were duplicates"
                                            if s["collapsed_points"] else ""))
    print(f"  results {s['results_dir']}: {s['done']} done, {s['failed']} with a recorded failure, "
          f"{s['to_run']} to run")
    for name, values in s.get("recipes", {}).items():
        sets = ", ".join(f"{k.replace('_', '-')}={v}" for k, v in values.items()) or "nothing (our defaults)"
        print(f"  recipe {name} (explicit options win): {sets}")
    shared = sum(len(g["runs"]) > 1 for g in s["groups"] if g["kind"] == "features")
    unknown = f", {s['features_unknown']} unknown (default weights not run yet here)" if s["features_unknown"] else ""
    print(f"  frozen features: {s['feature_groups']} extractions ({shared} shared by several runs), "
          f"{s['features_cached']} cached{unknown}")
    if s["prefix_groups"]:
        print(f"  trained runs on a cached frozen prefix: {s['prefix_groups']} groups")
    passes = s.get("image_passes") or {}
    if passes:
        each = ", ".join(f"{k} {_count(v)}" for k, v in passes.items())
        print(f"  cost of the whole grid (done runs and cached features included): {_count(sum(passes.values()))} "
              f"backbone image passes (frozen parts once, epochs at their maximum; hours: "
              f"benchmarks/estimate_cost.py with a measured throughput): {each}")
    missing = s["missing_data_files"]
    if missing:
        names = ", ".join(missing[:6]) + (f", ... ({len(missing)} files)" if len(missing) > 6 else "")
        print(f"  not in {s['data_root']} (downloaded before the sweep starts): {names}")
    for line in extra:
        print(f"  {line}")
    multi = [g for g in s["groups"] if len(g["runs"]) > 1]
    shown = multi if list_runs else multi[:GROUPS_SHOWN]
    if multi:
        print("groups sharing one frozen computation (each run in sequence by one worker):")
        for g in shown:
            cached = {True: ", cached", False: ", to extract", None: ""}[g["cached"]]
            print(f"  [{g['group']}] {g['label']}: {len(g['runs'])} runs ({g['done']} done){cached}")
        if len(shown) < len(multi):
            print(f"  ... {len(multi) - len(shown)} more (--list shows all groups and runs)")
    if list_runs:
        print("runs:")
        for r in s["run_list"]:
            print(f"  [{r['status']:<6}] {r['run_id']}" + (f"  group {r['group']}" if r["group"] else ""))
