"""Heatmaps: the class-activation methods of pytorch-grad-cam on the layers the backbone adapter
names (``Backbone.cam_layers``, reshaped by ``Backbone.feature_map``), and attention rollout
(Abnar & Zuidema 2020) on the attention maps the adapter captures (``Backbone.attention_maps``)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError
from .model import Rebuilt

CAM_METHODS = ("gradcam", "gradcam++", "scorecam", "eigencam")
METHODS = CAM_METHODS + ("rollout",)
SCORECAM_BATCH = 32  # masked copies per forward


def _cam_class(method: str):
    from pytorch_grad_cam import EigenCAM, GradCAM, GradCAMPlusPlus, ScoreCAM

    return {"gradcam": GradCAM, "gradcam++": GradCAMPlusPlus, "scorecam": ScoreCAM, "eigencam": EigenCAM}[method]


def check_method(method: str, rebuilt: Rebuilt) -> None:
    """A one-line error for a method that does not apply (before any image is processed)."""
    from ..errors import did_you_mean

    if method not in METHODS:
        raise UserError(f"unknown --method {method!r}; {did_you_mean(method, METHODS)}")
    if method == "rollout":  # families without attention maps say so on one blank image
        size = rebuilt.cfg.input_size or rebuilt.dataset.size
        rebuilt.backbone.attention_maps(torch.zeros(1, 3, size, size, device=rebuilt.device))


def layer_names(rebuilt: Rebuilt) -> list[str]:
    names = {id(m): n for n, m in rebuilt.backbone.named_modules()}
    return [names.get(id(m), type(m).__name__) for m in rebuilt.backbone.cam_layers()]


def heatmaps(rebuilt: Rebuilt, x: torch.Tensor, targets: list[int], method: str) -> np.ndarray:
    """(B, S, S) maps in [0, 1] for inputs ``x`` (B,3,S,S), each for its target class."""
    if method == "rollout":
        return rollout(rebuilt, x)
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    cls = _cam_class(method)
    with cls(model=rebuilt.net, target_layers=rebuilt.backbone.cam_layers(),
             reshape_transform=rebuilt.backbone.feature_map) as cam:
        cam.batch_size = SCORECAM_BATCH  # read by ScoreCAM only
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    if out is None:  # pytorch-grad-cam's __exit__ swallows an IndexError and returns nothing
        raise UserError(f"--method {method} failed on {rebuilt.cfg.backbone}; try --method gradcam")
    return np.asarray(out, dtype=np.float32)


def rollout(rebuilt: Rebuilt, x: torch.Tensor) -> np.ndarray:
    """Attention rollout: per block the head-mean attention plus the residual (0.5 A + 0.5 I,
    rows renormalised), multiplied from the first block to the last; the rows the readout reads
    (the class token, or every patch token for mean readouts and token heads) over the patches.
    Class-agnostic: the same map whatever class is predicted."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    backbone = rebuilt.backbone
    got = backbone.attention_maps(x)
    if len(got.maps) != backbone.num_blocks:
        raise UserError(f"--method rollout: captured {len(got.maps)} attention maps for {backbone.num_blocks} "
                        f"blocks of {rebuilt.cfg.backbone}; use --method gradcam")
    n = got.maps[0].shape[-1]
    eye = torch.eye(n, device=got.maps[0].device)
    joint = eye.expand(x.shape[0], n, n)
    for a in got.maps:
        a = 0.5 * a.float().mean(1) + 0.5 * eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    prefix = backbone.num_prefix_tokens
    rows = None if rebuilt.reads_tokens else got.query_rows
    per_patch = joint[:, prefix:, prefix:].mean(1) if rows is None else joint[:, rows, prefix:].mean(1)
    grid = backbone.feature_map(torch.cat([per_patch.new_zeros(per_patch.shape[0], prefix), per_patch], 1)
                                .unsqueeze(-1))[:, 0]
    return np.asarray(scale_cam_image(grid.cpu().numpy(), (x.shape[-1], x.shape[-2])), dtype=np.float32)
