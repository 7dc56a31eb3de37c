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

    def as_map(h: torch.Tensor) -> torch.Tensor:  # fp32: pytorch-grad-cam reads maps through numpy (no bf16)
        return rebuilt.backbone.feature_map(h).float()

    # fp32 whatever the run's precision: fp16 gradients without loss scaling underflow (flat maps);
    # the class each map explains is the run's saved prediction, so precision does not pick it
    with cls(model=rebuilt.net, target_layers=rebuilt.backbone.cam_layers(), reshape_transform=as_map) as cam:
        cam.batch_size = SCORECAM_BATCH  # read by ScoreCAM only
        out = cam(input_tensor=x, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    if out is None:  # pytorch-grad-cam's __exit__ swallows an IndexError and returns nothing
        raise UserError(f"--method {method} failed on {rebuilt.cfg.backbone}; try --method gradcam")
    return np.asarray(out, dtype=np.float32)


def native_grid(rebuilt: Rebuilt, x: torch.Tensor) -> tuple[int, int]:
    """The map's own grid before it is upsampled to the input (e.g. 2x2 for a ResNet at 64 px): the
    target layer's feature map, which is also the patch grid attention rollout spreads over."""
    seen: list[torch.Tensor] = []
    layer = rebuilt.backbone.cam_layers()[-1]
    hook = layer.register_forward_hook(lambda m, i, o: seen.append(o[0] if isinstance(o, tuple) else o))
    try:
        with torch.no_grad():
            rebuilt.net(x[:1])
    finally:
        hook.remove()
    h, w = rebuilt.backbone.feature_map(seen[-1]).shape[-2:]
    return int(h), int(w)


def rollout(rebuilt: Rebuilt, x: torch.Tensor) -> np.ndarray:
    """Attention rollout: per block the head-mean attention plus the residual (0.5 A + 0.5 I,
    rows renormalised), multiplied from the first block to the last; the rows the readout reads
    (the class token, or every patch token for mean readouts) over the patches. A DeiT head's own
    blocks are chained on: its class token's row through the head, over the backbone tokens the
    head was given. Class-agnostic: the same map whatever class is predicted."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    backbone = rebuilt.backbone
    got = backbone.attention_maps(x)  # fp32, as the Grad-CAM maps
    head_maps = head_attention(rebuilt, x)
    if len(got.maps) != backbone.num_blocks:
        raise UserError(f"--method rollout: captured {len(got.maps)} attention maps for {backbone.num_blocks} "
                        f"blocks of {rebuilt.cfg.backbone}; use --method gradcam")
    joint = _chain(got.maps)
    prefix = backbone.num_prefix_tokens
    if head_maps:
        per_token = _through_head(rebuilt, joint, _chain(head_maps))
    elif rebuilt.reads_tokens or got.query_rows is None:  # every patch token is read
        per_token = joint[:, prefix:].mean(1)
    else:
        per_token = joint[:, got.query_rows].mean(1)
    per_patch = per_token[:, prefix:]
    grid = backbone.feature_map(torch.cat([per_patch.new_zeros(per_patch.shape[0], prefix), per_patch], 1)
                                .unsqueeze(-1))[:, 0]
    return np.asarray(scale_cam_image(grid.cpu().numpy(), (x.shape[-1], x.shape[-2])), dtype=np.float32)


def _chain(maps: list[torch.Tensor]) -> torch.Tensor:
    """(B, N, N): how much each token after the last block draws on each token before the first."""
    n = maps[0].shape[-1]
    eye = torch.eye(n, device=maps[0].device)
    joint = eye.expand(maps[0].shape[0], n, n)
    for a in maps:
        a = 0.5 * a.float().mean(1) + 0.5 * eye
        joint = (a / a.sum(-1, keepdim=True)) @ joint
    return joint


def _through_head(rebuilt: Rebuilt, joint: torch.Tensor, head_joint: torch.Tensor) -> torch.Tensor:
    """(B, N) over the backbone's input tokens: the head's class token (row 0 of its rollout) over
    its other tokens, each the backbone token it was given (projected token by token, so nothing
    mixes in between), through the backbone's rollout. The head's class token is a learned
    constant: what it draws on itself carries nothing from the image and is left out."""
    offset = 0 if getattr(rebuilt.head, "token_choice", "all") == "all" else rebuilt.backbone.num_prefix_tokens
    given = joint.shape[-1] - offset
    if head_joint.shape[-1] != 1 + given:
        raise UserError(f"--method rollout: the head of run {rebuilt.run_id} reads {head_joint.shape[-1] - 1} tokens, "
                        f"the backbone gives {given}; use --method gradcam")
    return head_joint[:, 0, 1:].unsqueeze(1).bmm(joint[:, offset:]).squeeze(1)


def head_blocks(rebuilt: Rebuilt) -> int:
    """How many attention blocks of its own the run's head has (a DeiT head's; else 0)."""
    return len(getattr(rebuilt.head, "blocks", ())) if rebuilt.reads_tokens else 0


def head_attention(rebuilt: Rebuilt, x: torch.Tensor) -> list[torch.Tensor]:
    """The token head's own attention weights per block (the DeiT head's timm blocks: softmax taken
    before ``attn_drop`` in an unfused pass, as for the timm ViTs); [] for heads without blocks."""
    if not head_blocks(rebuilt):
        return []
    from backbones.vit_common import timm_attention_weights

    return timm_attention_weights(rebuilt.head.blocks, lambda: rebuilt.net(x),
                                  what=f"the head blocks of run {rebuilt.run_id}")
