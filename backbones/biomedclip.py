"""BiomedCLIP (Zhang et al. 2023): a CLIP trained on PMC-15M figure-caption pairs.

open_clip loads it as ``hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224``; its
image tower is open_clip's ``TimmModel``: a timm ``vit_base_patch16_224`` trunk (created with
pretrained=False, classifier reset, timm's default token pool: final norm, CLS) followed by
``head.proj``, a bias-free Linear 768 -> 512 (open_clip_config.json: timm_pool "", timm_proj
"linear"). The trunk is run here as a :class:`~backbones.vit_common.TimmViT`, so the readouts
and position-embedding resampling are the ones every timm ViT gets.

readout "cls": the trunk's pooled token (before the projection; default)
        "proj": the same @ head.proj, the CLIP image embedding

``--weights PATH`` takes the release file ``open_clip_pytorch_model.bin`` (full CLIP:
``visual.trunk.*``, ``visual.head.proj.weight``; the text tower is read only by ``text_tower``) or the
image tower alone.

Text tower (zero-shot runs only): open_clip's ``HFTextEncoder`` as BiomedCLIP's open_clip_config.json
builds it (PubMedBERT, CLS of the last hidden state, MLP projection to 512, 256 tokens), its
weights from the same checkpoint (``text.*``) and its logit scale ``logit_scale.exp()``. The BERT
config and tokenizer files come from the Hugging Face hub (TEXT_REPO): offline without them in the
HF cache it refuses in one line naming them. The tiny test variant has a small random BERT and a
character-level WordPiece vocabulary written locally.
"""
from __future__ import annotations

import torch
from torch import nn

from bench.errors import UserError

from . import hub, timm_common
from .base import Backbone, Spec, TextTower
from .clip import OPENAI_MEAN, OPENAI_STD
from .registry import Adapter, WeightFile
from .vit_common import TINY, TimmViT, vit_kwargs

REPO = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
FILENAME = "open_clip_pytorch_model.bin"
TRUNK = "vit_base_patch16_224"
# variant -> (timm kwargs overrides, projection dim); "tiny" is random-only, for tests
VARIANTS: dict[str, tuple[dict, int]] = {"vitb16": ({}, 512), "tiny": (dict(TINY), 16)}
# the text tower of open_clip_config.json (text_cfg): what zero-shot runs build
TEXT_REPO = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
TEXT_FILES = ("config.json", "vocab.txt", "tokenizer_config.json")
TEXT_POOLER, TEXT_PROJ, CONTEXT_LENGTH = "cls_last_hidden_state_pooler", "mlp", 256
TINY_BERT = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                 max_position_embeddings=64)

SPEC = Spec(
    name="biomedclip", family="clip", variants=tuple(VARIANTS), default_variant="vitb16", input_size=224,
    mean=OPENAI_MEAN, std=OPENAI_STD,  # open_clip_config.json preprocess_cfg
    weights_source=f"open_clip hf-hub:{REPO} ({FILENAME}, HF cache)",
    license="mit", readouts=("cls", "proj"), text_readout="proj",
    description="BiomedCLIP ViT-B/16 image tower (PMC-15M figure-caption pairs); PubMedBERT text tower only for --head zeroshot",
    training_data="PMC-15M: 15M figure-caption pairs from PubMed Central articles",
    paper_use="not in the paper",
    facts={"blocks": 12, "embed_dim": "768 (proj: 512)", "params": "86M"},
)


class _Projection(nn.Module):
    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(dim_out, dim_in))  # nn.Linear layout, no bias
        nn.init.trunc_normal_(self.weight, std=dim_in ** -0.5)


class BiomedCLIPBackbone(TimmViT):
    def __init__(self, trunk: nn.Module, proj_dim: int, variant: str, readout: str, input_size: int) -> None:
        super().__init__(trunk, SPEC, variant, "random", readout="cls", input_size=input_size)
        self.readout_name = readout
        self.proj = _Projection(trunk.num_features, proj_dim)
        if readout == "proj":
            self.embed_dim = proj_dim
        self.init_seed = torch.initial_seed()  # what text_tower() needs: a random init's seed, the weights file
        self.weights_source = ""

    def text_tower(self) -> TextTower:
        """open_clip's HFTextEncoder (PubMedBERT, CLS pooling, MLP projection), loaded from the checkpoint
        the image tower came from (``text.*``); random (seeded like the image tower) with random weights."""
        from open_clip.hf_model import HFTextEncoder
        from open_clip.tokenizer import HFTokenizer
        from transformers import BertConfig

        name = self.spec.name if self.variant == self.spec.default_variant else f"{self.spec.name}@{self.variant}"
        tiny = self.variant == "tiny"
        folder = tiny_tokenizer_dir() if tiny else text_files(name)
        config = BertConfig(vocab_size=len(TINY_VOCAB), **TINY_BERT) if tiny else BertConfig.from_pretrained(folder)
        with torch.random.fork_rng():
            torch.manual_seed(self.init_seed + 1)
            text = HFTextEncoder(TEXT_REPO, output_dim=self.proj.weight.shape[0], config=config,
                                 pooler_type=TEXT_POOLER, proj_type=TEXT_PROJ, pretrained=False)
        scale = 1 / 0.07  # open_clip's init
        if self.weights_source:
            sd = hub.load_state_dict(self.weights_source)
            if sd and all(k.startswith("module.") for k in sd):
                sd = {k[len("module."):]: v for k, v in sd.items()}
            text_sd = {k[len("text."):]: v for k, v in sd.items() if k.startswith("text.")}
            if not text_sd:
                raise UserError(f"--head zeroshot: weights {self.weights_source!r} hold no text tower (text.*); pass "
                                f"BiomedCLIP's full {FILENAME}")
            # the release's BERT has no pooler (open_clip builds it without one for CLS pooling)
            hub.load_into(text, text_sd, name=f"{name} text tower", source=self.weights_source,
                          allow_missing=("transformer.pooler.",))
            if "logit_scale" in sd:
                scale = float(sd["logit_scale"].float().exp().reshape(-1)[0])
        elif self.weights_id != "random" and not self.weights_id.endswith("-seed0"):
            raise UserError(f"--head zeroshot: {name}'s weights ({self.weights_id}) hold no text tower; pass "
                            f"BiomedCLIP's full {FILENAME}")
        text = text.eval().to(next(self.parameters()).device)
        tokenizer = HFTokenizer(str(folder), context_length=TINY_BERT["max_position_embeddings"] if tiny else CONTEXT_LENGTH)

        def encode(prompts: list[str]) -> torch.Tensor:
            with torch.no_grad():
                return text(tokenizer(prompts).to(next(text.parameters()).device)).float()

        return TextTower(encode, scale, f"open_clip HFTextEncoder ({'tiny BERT' if tiny else TEXT_REPO}), "
                         f"HFTokenizer", self.weights_id)

    def readout(self, h: torch.Tensor) -> torch.Tensor:
        pooled = self.forward_head(self.norm(h), pre_logits=True)  # the trunk's own token pool
        return pooled @ self.proj.weight.t() if self.readout_name == "proj" else pooled

    def readout_modules(self) -> list[nn.Module]:
        return [*super().readout_modules(), *([self.proj] if self.readout_name == "proj" else [])]


def tower_state(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A BiomedCLIP state dict (full CLIP or image tower) -> (timm trunk keys, projection keys)."""
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    if any(k.startswith("visual.") for k in sd):
        sd = {k[len("visual."):]: v for k, v in sd.items() if k.startswith("visual.")}
    trunk = {k[len("trunk."):]: v for k, v in sd.items() if k.startswith("trunk.")}
    proj = {"proj.weight": v for k, v in sd.items() if k == "head.proj.weight"}
    return trunk, proj


# a character-level WordPiece vocabulary for the tiny test model's BERT tokenizer (no download)
TINY_VOCAB = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz0123456789.,:;'-&()/")
              + [f"##{c}" for c in "abcdefghijklmnopqrstuvwxyz0123456789"])


def tiny_tokenizer_dir():
    """A folder with the tiny BERT tokenizer's files (written once, in the temp folder)."""
    import json
    import tempfile
    from pathlib import Path

    folder = Path(tempfile.gettempdir()) / "medfm-bench-tiny-bert-tokenizer-v1"
    if not (folder / "tokenizer_config.json").exists():
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.txt").write_text("\n".join(TINY_VOCAB) + "\n")
        (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer",
                                                                  "do_lower_case": True}))
    return folder


def text_files(name: str):
    """The folder (HF cache snapshot) with the text tower's BERT config and tokenizer files; one line
    naming them when they are not cached and cannot be downloaded."""
    return hub.hf_folder(TEXT_REPO, TEXT_FILES, name=name, what=f"{name}'s text tower needs its PubMedBERT config and tokenizer")


def _load(backbone: BiomedCLIPBackbone, sd: dict[str, torch.Tensor], *, name: str, source: str) -> None:
    backbone.weights_source = str(source)
    trunk, proj = tower_state(sd)
    if not trunk or not proj:
        raise UserError(f"weights {source!r} do not fit backbone {name!r}: no open_clip TimmModel image tower "
                        f"(visual.trunk.* and visual.head.proj.weight); pass BiomedCLIP's {FILENAME}")
    # through timm's ViT checkpoint filter, which resamples pos_embed to the input size
    timm_common.load_timm_state_dict(backbone, {**trunk, **proj}, name=name, source=source)


def build(variant: str, weights: str, *, readout: str | None = None,
          input_size: int | None = None) -> Backbone:
    name, readout = SPEC.check(variant, readout)
    overrides, proj_dim = VARIANTS[variant]
    size = input_size or SPEC.input_size

    def new() -> BiomedCLIPBackbone:
        trunk, _ = timm_common.create(TRUNK, "random", name=name, **vit_kwargs(size, 16), **overrides)
        return BiomedCLIPBackbone(trunk, proj_dim, variant, readout, size)

    return hub.build_with_weights(
        new, lambda m, sd, source: _load(m, sd, name=name, source=source), weights,
        lambda: (hub.hf_file(REPO, FILENAME, name=name), f"hf:{REPO}/{FILENAME}"),
        fixed_seed_id="biomedclip-tiny-seed0" if variant == "tiny" else None)


def weight_files(variant: str) -> list[WeightFile]:
    return [] if variant == "tiny" else [WeightFile("hf", REPO, FILENAME)]


BIOMEDCLIP = Adapter(SPEC, build, weight_files)
