"""Weights in gated Hugging Face repos (UNI, RETFound): the error says how to get access."""
from __future__ import annotations

from bench.errors import UserError

from . import hub


def hf_file(repo: str, filename: str, *, name: str) -> str:
    """``hub.hf_file`` whose failure adds the access steps a gated repo needs."""
    try:
        return hub.hf_file(repo, filename, name=name)
    except UserError as e:
        raise UserError(f"{e}; {repo} is gated: request access at https://huggingface.co/{repo}, "
                        f"then `hf auth login` (or set HF_TOKEN) before `bench weights fetch {name}`") from e
