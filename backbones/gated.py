"""Weights in gated Hugging Face repos (UNI, RETFound): the error says how to get access."""
from __future__ import annotations

from bench.errors import UserError

from . import hub


def hf_file(repo: str, filename: str, *, name: str) -> str:
    """``hub.hf_file`` whose failure adds the access steps a gated repo needs."""
    steps = (f"request access at https://huggingface.co/{repo}, then `hf auth login` (or set HF_TOKEN) "
             f"before `bench weights fetch {name}`")
    try:
        return hub.hf_file(repo, filename, name=name)
    except UserError as e:
        if _refused(e.__cause__):  # online, but this account has no access: only the access steps apply
            raise UserError(f"weights for {name!r}: the hub refused {repo}/{filename} (a gated repo this "
                            f"account has no access to); {steps}") from e
        raise UserError(f"{e}; {repo} is gated: {steps}") from e


def _refused(error: BaseException | None) -> bool:
    """A gated repo's denial (huggingface_hub's GatedRepoError, or HTTP 401/403)."""
    if error is None:
        return False
    status = getattr(getattr(error, "response", None), "status_code", None)
    return type(error).__name__ == "GatedRepoError" or status in (401, 403)
