"""Weight files: each library's own cache and download, and loading of local files.

Downloads go through huggingface_hub (timm, transformers, open_clip all use it, honouring HF_HOME
and HF_HUB_OFFLINE) or torch.hub's cache (TORCH_HOME) for plain URLs. Before any download we probe
the host once with a short timeout, so an offline machine gets a one-line error in seconds instead
of a minute of library retries.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import os
import socket
from functools import lru_cache
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import torch

from bench.env import env_number
from bench.errors import UserError

PROBE_TIMEOUT_S = env_number("BENCH_PROBE_TIMEOUT", 3.0, low=0.1)


@lru_cache(maxsize=None)
def host_reachable(host: str, port: int = 443) -> bool:
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing: let the library try
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hf_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "ON", "YES")


def _missing(what: str, where: str, name: str, why: str) -> UserError:
    return UserError(f"weights for {name!r} not found: need {what} in {where} ({why}); "
                     f"run `bench weights fetch {name}` on a connected machine, "
                     f"or pass --weights PATH to a local copy, or --weights random")


def hf_cached(repo_id: str, filename: str) -> str | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, filename)
    return found if isinstance(found, str) else None


def hf_folder(repo_id: str, filenames: tuple[str, ...] | list[str], *, name: str, what: str) -> Path:
    """The folder (HF cache snapshot) holding ``filenames`` of ``repo_id``; one line naming them when
    they are not cached and cannot be downloaded (``what``: what needs them, e.g. a text tower)."""
    found = [hf_cached(repo_id, f) for f in filenames]
    if all(found):
        return Path(found[0]).parent
    try:
        paths = [hf_file(repo_id, f, name=name) for f in filenames]
    except UserError as e:
        why = str(e).rsplit("(", 1)[-1].split(")")[0] if "(" in str(e) else str(e)
        raise UserError(f"--head zeroshot: {what} from the Hugging Face hub: {', '.join(filenames)} of {repo_id}, "
                        f"not in the HF cache ({why}); fetch them once online "
                        f"(huggingface-cli download {repo_id} {' '.join(filenames)})") from None
    return Path(paths[0]).parent


def hf_file(repo_id: str, filename: str, *, name: str) -> str:
    """Path of ``filename`` from the Hugging Face repo, from the cache or downloaded into it."""
    from huggingface_hub import constants, hf_hub_download

    cached = hf_cached(repo_id, filename)
    if cached:
        return cached
    where = f"HF cache {constants.HF_HUB_CACHE}"
    what = f"{repo_id}/{filename}"
    if hf_offline():
        raise _missing(what, where, name, "HF_HUB_OFFLINE is set")
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if not host_reachable(host):
        raise _missing(what, where, name, f"{host} is unreachable")
    try:
        return hf_hub_download(repo_id, filename)
    except Exception as e:  # the hub raises many types; one line is what the user needs
        raise _missing(what, where, name, f"download failed: {str(e).splitlines()[0][:200]}") from e


def torch_hub_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def url_file(url: str, *, name: str) -> str:
    """Path of a plain-URL checkpoint in torch.hub's cache (TORCH_HOME), downloaded if needed."""
    target = torch_hub_dir() / os.path.basename(urlparse(url).path)
    if target.exists():
        return str(target)
    host = urlparse(url).hostname or ""
    if not host_reachable(host):
        raise _missing(target.name, str(target.parent), name, f"{host} is unreachable")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)
    except Exception as e:
        raise _missing(target.name, str(target.parent), name,
                       f"download failed: {str(e).splitlines()[0][:200]}") from e
    return str(target)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a checkpoint safely: safetensors, or torch.load with weights_only=True.

    Common wrappers ({"model": ...}, {"state_dict": ...}) are unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"weights file {str(path)!r} does not exist; pass --weights default|random|PATH")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            # training scripts (MAE's, RETFound's) save their argparse.Namespace beside the weights:
            # a plain attribute bag, safe to allow; everything else stays weights_only
            allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
            with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
                sd = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"cannot read weights file {str(path)!r} (safetensors, or a torch state dict "
                        f"loadable with weights_only=True): {str(e).splitlines()[0][:200]}") from e
    for key in ("state_dict", "model", "module", "teacher"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"weights file {str(path)!r} is not a state dict of tensors")
    return sd


def load_into(module: torch.nn.Module, sd: dict[str, torch.Tensor], *, name: str, source: str,
              allow_missing: tuple[str, ...] = (), ignore_unexpected: tuple[str, ...] = ()) -> None:
    """load_state_dict that turns architecture mismatches into one clear line."""
    own = module.state_dict()
    missing = [k for k in own if k not in sd and not k.startswith(allow_missing)]
    unexpected = [k for k in sd if k not in own and not k.startswith(ignore_unexpected)]
    shape = [k for k in own if k in sd and tuple(sd[k].shape) != tuple(own[k].shape)]
    if missing or shape or (unexpected and len(unexpected) > len(own) // 2):
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if shape:
            k = shape[0]
            detail.append(f"{len(shape)} shape mismatches (e.g. {k}: file {tuple(sd[k].shape)} "
                          f"vs model {tuple(own[k].shape)})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise UserError(f"weights {source!r} do not fit backbone {name!r}: " + "; ".join(detail)
                        + "; pass a checkpoint of this architecture and variant")
    module.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 prefix of a file, the cache key for locally supplied weights."""
    return "sha256:" + file_digest(path, "sha256")[:16]


def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    """Hex digest of a file, memoised per path, mtime and size: in this process, and on disk in
    the cache folder (``digests/``), so a later run does not read a multi-GB dataset file or a
    folder of images again to know it is unchanged."""
    st = os.stat(path)
    return _digest(str(Path(path).resolve()), st.st_mtime_ns, st.st_size, algorithm)


@lru_cache(maxsize=65536)
def _digest(path: str, mtime_ns: int, size: int, algorithm: str) -> str:
    from bench.env import default_cache_dir

    memo = default_cache_dir() / "digests" / hashlib.sha1(f"{path}|{mtime_ns}|{size}|{algorithm}".encode()).hexdigest()
    try:
        known = memo.read_text().strip()
        if known:
            return known
    except OSError:
        pass
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    digest = h.hexdigest()
    try:  # a memo that cannot be written (read-only cache) only costs the next run a re-read
        from bench.fsio import atomic_write_text

        atomic_write_text(memo, digest, "digest memo")
    except Exception:
        pass
    return digest


def build_with_weights(new: Callable[[], torch.nn.Module], load: Callable[[torch.nn.Module, dict, str], None],
                       weights: str, fetch_default: Callable[[], tuple[str, str]], *,
                       fixed_seed_id: str | None = None) -> torch.nn.Module:
    """The weights logic adapters share, in the order that fails fastest.

    ``new()`` builds the random module; ``load(module, state_dict, source)`` maps and loads a
    state dict; ``fetch_default()`` returns (local path, fingerprint) of the default weights.
    The file is found and read before the model is built, so offline or a bad file fails in
    seconds. ``fixed_seed_id``: test-size variants without published weights, for which
    "default" means a fixed-seed init that keeps features (and the cache) stable.
    """
    if fixed_seed_id is not None and weights == "default":
        with torch.random.fork_rng():
            torch.manual_seed(0)
            module = new()
        module.weights_id = fixed_seed_id
        return module
    if weights == "random":
        sd, source, fingerprint = None, "", "random"
    elif weights == "default":
        source, fingerprint = fetch_default()
        sd = load_state_dict(source)
    else:
        source, sd, fingerprint = weights, load_state_dict(weights), file_fingerprint(weights)
    module = new()
    if sd is not None:
        load(module, sd, source)
    module.weights_id = fingerprint
    return module
