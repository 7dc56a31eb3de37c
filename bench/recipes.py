"""Recipes: a publication's protocol as option defaults, each value with where it comes from.

A recipe maps run options (bench.options) to :class:`Setting` s: the value, the line of the
publication's code it was read from, and a note where we deliberately or necessarily differ.
``--recipe NAME`` fills every option the user did not give from its recipe (explicit option >
recipe > option default; bench.resolve). Rows in ``notes`` are settings no option expresses:
quirks of the released code and what we do instead. The fidelity tables of docs/recipes.md
and `bench ls recipes` are rendered from this module, never written by hand.

Citations are ``repo@commit:path:line`` of the code as read (full commits in ``Recipe.code``).
This module imports only bench.errors: bench.options takes the recipe names from here, and the
fidelity tables that need the option flags are rendered by bench.docgen.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .errors import UserError, did_you_mean

FM = "joanaapa/Foundation-Medical@a7aa194"                            # Huix et al., WACV 2024
MP = "sdoerrich97/rethinking-model-prototyping-MedMNISTPlus@b67b772"  # Doerrich et al. 2024/25
EX = "MedMNIST/experiments@70b6b3a"                                    # Yang et al. 2023 (v2)
MM = "MedMNIST/MedMNIST@805b742"                                       # the medmnist package
TIMM = "timm==0.9.16"  # MedMNIST+ does not pin timm; the release current when it came out


@dataclass(frozen=True)
class Setting:
    value: Any
    source: str       # repo@commit:path:line, or where it was looked for and not found
    note: str = ""    # where we differ, and why


@dataclass(frozen=True)
class Note:
    """A setting of the publication that no option expresses (a quirk, a model choice)."""
    setting: str
    theirs: str
    ours: str
    source: str


@dataclass(frozen=True)
class Recipe:
    name: str
    title: str
    code: str                              # the code read, with its full commit
    sets: dict[str, Setting] = field(default_factory=dict)
    notes: tuple[Note, ...] = ()
    version: int = 1   # bumped when a value changes what a run computes: above 1 it enters the run id

    def values(self) -> dict[str, Any]:
        return {k: s.value for k, s in self.sets.items()}


S, N = Setting, Note

MEDFM = Recipe("medfm", "medfm-bench's own defaults (sets nothing)", "this repository")

PAPER = Recipe(
    "paper", "Huix et al., WACV 2024 (the paper), as its released code does it",
    "joanaapa/Foundation-Medical@a7aa194f0643583f29fc9d32f211e2815400709b (params.json is its only "
    "released config: APTOS2019, SEEM + DeiT-B head)",
    {
        "epochs": S(100, f"{FM}:params.json:256-257"),
        "lr": S(1e-4, f"{FM}:params.json:205-213"),
        "weight_decay": S(1e-5, f"{FM}:params.json:205-213",
                          "none on biases and 1-D parameters (defaults/wrappers.py:243-251), as ours"),
        "batch_size": S(64, f"{FM}:params.json:150-175",
                        "their val loader is shuffled with drop_last=True (params.json:159-166); we score every val image"),
        "warmup": S(5, f"{FM}:classification.py:103-112",
                    "5 epochs for DDSM and APTOS2019, 1000 iterations for ISIC2019 and CheXpert; MedMNIST is not "
                    "in the paper, we take 5 epochs. Theirs rises from 1e-8 (utils/_utils.py:116-151), ours from lr/steps"),
        "schedule": S("constant", f"{FM}:params.json:220-223; utils/_utils.py:116-151",
                      "linear warm-up then constant (no decay)"),
        "patience": S(0, f"{FM}:defaults/trainer.py:50-91", "no early stopping"),
        "grad_clip": S(1.0, f"{FM}:params.json:262"),
        "augment": S("huix", f"{FM}:params.json:6-24,41-48,92-99; defaults/bases.py:66-111",
                     "random resized crop 224 (scale 0.8-1.2), vertical and horizontal flips (0.5), colour jitter "
                     "(0.2, 0.2, 0.1, 0.1) with p=0.8, in pixel space; on the device, not PIL"),
        "resize": S("resize-crop", f"{FM}:params.json:6-24,122-147",
                    "Resize((256, 256)) squashes, then CenterCrop 224; ours bilinear (antialiased when shrinking) "
                    "on the device, theirs PIL"),
        "crop_from": S(256, f"{FM}:params.json:122-147"),
        "input_size": S(224, f"{FM}:params.json:122-147"),
        "normalize": S("dataset", f"{FM}:defaults/datasets.py:21-22,161-163,185-186,246-247",
                       "each dataset's own mean/std for every backbone; theirs are constants for APTOS, ISIC, CheXpert "
                       "and DDSM (how they were computed: not found), ours are computed on each MedMNIST train split"),
        "gray": S("red", f"{FM}:utils/_utils.py:25-31; defaults/models.py:64",
                  "only the red-channel filters of the first layer see a grayscale image"),
        "precision": S("fp16", f"{FM}:params.json:266; defaults/trainer.py:45-47",
                       "their DeiT-head runs keep backbone and head in fp32 (defaults/bases.py:510-514, defaults/models.py:186) and "
                       "test in fp32 (defaults/trainer.py:248); ours autocasts every forward on CUDA; CPU runs are fp32"),
        "linear_mode": S("online", f"{FM}:defaults/wrappers.py:557-575; defaults/models.py:177-189",
                         "the linear layer trains on augmented images through the frozen backbone (in eval mode)"),
        "head_arch": S("deit_base", f"{FM}:params.json:179-189; utils/transformers/transformers_utils.py:57,80-85",
                       "supervised ImageNet-1k DeiT-B; ours from timm deit_base_patch16_224.fb_in1k"),
        "head_depth": S(12, f"{FM}:utils/transformers/deit.py:215-230,342-345",
                        "the full DeiT-B (patch_embed replaced), all trainable"),
        "head_tokens": S("patches-prenorm", f"{FM}:defaults/models.py:211,469",
                         "DINOv2's pre-norm patch tokens, CLS dropped; their BLIP feeds post-norm patch tokens "
                         "(utils/transformers/vit.py:196): pass --head-tokens patches for BLIP"),
    },
    (
        N("model selection", "best val target metric: APTOS quadratic kappa, ISIC macro recall, DDSM and CheXpert "
          "ROC-AUC", "MedMNIST is not in the paper: our default --select auc",
          f"{FM}:defaults/trainer.py:222-231; defaults/datasets.py:24,102,198,255"),
        N("seeds", "none set (only the split seed 42); repeat count not found", "seeds 0, 1, 2",
          f"{FM}:defaults/bases.py:247,258; utils/system_def.py:13"),
        N("CLIP readout", "ln_post(x[:, 0]) @ proj intended; as released the model returns a tuple that reaches "
          "nn.Linear and raises", "the intended value: --readout proj (configs/paper.yaml)",
          f"{FM}:env_files/open_clip/model.py:141; defaults/models.py:247,252"),
        N("BLIP readout", "x[:, 1], the first patch token (looks like a bug)", "CLS, x[:, 0]",
          f"{FM}:utils/transformers/vit.py:194-196"),
        N("partial unfreezing with the DeiT head", "re-frozen on every forward, so nothing there trains",
          "--head deit --unfreeze lastN trains those blocks; configs/paper.yaml runs the DeiT head frozen",
          f"{FM}:defaults/models.py:413,433-436"),
        N("optimizer", "torch AdamW, default betas", "torch AdamW, default betas", f"{FM}:defaults/wrappers.py:217-220"),
        N("val batches", "shuffled, drop_last=True; metric rounded to 3 dp", "every val image, unrounded",
          f"{FM}:params.json:159-166; defaults/trainer.py:222-231"),
    ),
)

MEDMNISTPLUS = Recipe(
    "medmnistplus", "Doerrich et al. 2024/2025 (MedMNIST+ benchmark), as its code does it",
    "sdoerrich97/rethinking-model-prototyping-MedMNISTPlus@b67b7722c26cc88de622b7c0b1eb5934c7a42832; "
    "timm defaults from timm==0.9.16 (not pinned by them)",
    {
        "resize": S("pad-normalized", f"{MP}:main.py:81-88",
                    "ToTensor, Normalize, then Pad to 224 with 0: the padding is the mean colour, not black"),
        "input_size": S(224, f"{MP}:main.py:81-88"),
        "normalize": S("backbone", f"{MP}:main.py:75-79", "each timm model's default_cfg mean/std"),
        "gray": S("repeat", f"{MP}:main.py:92; {MM}:medmnist/dataset.py:140-141", "convert('RGB')"),
        "knn_k": S(11, f"{MP}:evaluate.py:85-88", "hard-coded; their config's k is never read"),
        "knn_metric": S("euclidean", f"{MP}:evaluate.py:85-88",
                        "sklearn NearestNeighbors (ball_tree, Minkowski p=2) on unnormalised features, train split as "
                        "support set; ours exact float64 distances among float32 candidates"),
        "knn_vote": S("majority", f"{MP}:utils.py:135-154",
                      "unweighted majority (ties: smallest label); multi-label: neighbour mean > 0.5"),
        "epochs": S(100, f"{MP}:config.yaml:10; train.py:107"),
        "lr": S(1e-4, f"{MP}:config.yaml:11; train.py:86"),
        "weight_decay": S(1e-2, f"{MP}:train.py:26,86; {TIMM}:optim/adamw.py:39-40",
                          "timm AdamW's default"),
        "decay_scope": S("all", f"{MP}:train.py:86", "AdamW(model.parameters()): every parameter decays"),
        "batch_size": S(64, f"{MP}:config.yaml:12", "their eval batch (256) does not change results"),
        "warmup": S(0, f"{MP}:train.py:87; {TIMM}:scheduler/cosine_lr.py:33,37-38", "no warm-up"),
        "schedule": S("cosine-epoch", f"{MP}:train.py:87,138; {TIMM}:scheduler/cosine_lr.py",
                      "CosineLRScheduler(t_initial=epochs, t_in_epochs=True) stepped with epoch=e after epoch e: "
                      "one lr per epoch, epochs 0 and 1 both at 1e-4"),
        "grad_clip": S(0.0, f"{MP}:train.py:129-135", "loss.backward(); optimizer.step(): no clipping"),
        "select": S("loss", f"{MP}:train.py:184-187; evaluate.py:63-65", "lowest val loss checkpoint is tested"),
        "patience": S(5, f"{MP}:train.py:100-103,184-198", "5 epochs without a lower val loss"),
        "augment": S("none", f"{MP}:main.py:85-94", "one transform for all splits"),
        "precision": S("fp32", f"{MP}:main.py:48-61", "no AMP"),
        "linear_mode": S("online", f"{MP}:train.py:61-71,113",
                         "only the classifier trains, on images through the backbone"),
        "frozen_mode": S("train", f"{MP}:train.py:113",
                         "model.train() every epoch: BatchNorm statistics of the frozen CNNs adapt and dropout before "
                         "the head is active (no frozen prefix can be cached)"),
    },
    (
        N("models", "timm default tags of vgg16, alexnet (torchvision), resnet18, densenet121, efficientnet_b4, "
          "vit_base_patch16_224, vit_base_patch16_clip_224, eva02_base_patch16_clip_224, vit_base_patch16_224.dino, "
          "samvit_base_patch16", "the same through timm:NAME with the tags pinned (configs/medmnistplus.yaml)",
          f"{MP}:config.yaml:20; train.py:50-54; {TIMM}:models/_registry.py:54-63"),
        N("CLIP", "vit_base_patch16_clip_224 resolves to .laion2b_ft_in12k_in1k (fine-tuned on ImageNet)",
          "the same tag, pinned", f"{TIMM}:models/_registry.py:54-63; models/vision_transformer.py:1086,1258,1354"),
        N("SAM", "timm samvit_base_patch16 with its neck: 256-d pooled neck features", "timm:samvit_base_patch16.sa1b",
          f"{TIMM}:models/vision_transformer_sam.py:357-358,563-578"),
        N("kNN metrics", "ACC only (AUC reported as 0.0)", "every metric; AUC of one-hot votes is degenerate",
          f"{MP}:evaluate.py:131-137"),
        N("seeds", "9930641, 115149041, 252139603", "the same (configs/medmnistplus.yaml)", f"{MP}:config.yaml:22"),
        N("determinism", "cudnn.deterministic, use_deterministic_algorithms(True)", "not forced",
          f"{MP}:main.py:48-61"),
    ),
)

MEDMNIST_V2 = Recipe(
    "medmnist-v2", "Yang et al. 2023 (MedMNIST v2, Sci. Data): the ResNet baselines",
    "MedMNIST/experiments@70b6b3a7ad7afddff1df2a3b735235830fbdb142 (MedMNIST2D/train_and_eval_pytorch.py)",
    {
        "epochs": S(100, f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:255-258"),
        "lr": S(1e-3, f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:24,114"),
        "weight_decay": S(0.0, f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:24,114",
                          "torch Adam without weight decay; AdamW with 0 decay is the same update"),
        "batch_size": S(128, f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:266-268"),
        "warmup": S(0, f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:25-26,115", "no warm-up"),
        "schedule": S("step", f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:25-26,115,139", "x0.1 at epochs 50 and 75"),
        "patience": S(0, f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:132-157", "all epochs run"),
        "select": S("auc", f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:151-157",
                    "best val AUC, deep-copied since 8b0f553 (2023-05-18); before it the last epoch was tested"),
        "augment": S("none", f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:52-60"),
        "normalize": S("half", f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:56,60", "Normalize(mean=[.5], std=[.5])"),
        "resize": S("resize-nearest", f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:52-56",
                    "the (224) models: 28 px images resized to 224 with PIL NEAREST (pixel replication); a no-op "
                    "for the (28) models, which see 28 px"),
        "grad_clip": S(0.0, f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:183-204",
                       "loss.backward(); optimizer.step(): no clipping"),
    },
    (
        N("models", "ResNet-18/50 (28): 3x3 stride-1 stem, no max-pool; (224): torchvision, from scratch",
          "resnet18_28 / resnet50_28; resnet18 / resnet50 with --weights random; --unfreeze all",
          f"{EX}:MedMNIST2D/models.py:74-82; MedMNIST2D/train_and_eval_pytorch.py:84-86"),
        N("grayscale", "1 input channel", "repeated to 3 channels", f"{EX}:MedMNIST2D/train_and_eval_pytorch.py:30,84-86"),
        N("seeds", "none set", "seeds 0, 1, 2", f"{EX}:MedMNIST2D (no manual_seed)"),
    ),
)

PR = "the SimpleCNN primer (seed document)"  # the tutorial this project started from; no code repository

PRIMER = Recipe(
    "primer", "the SimpleCNN primer this project started from: simplecnn from scratch on PneumoniaMNIST, "
    "5 epochs, 87.82% test accuracy", f"{PR}, as the issue that added this recipe describes it",
    {
        "epochs": S(5, PR),
        "lr": S(1e-3, PR),
        "weight_decay": S(0.0, PR, "torch Adam without weight decay; AdamW with 0 decay is the same update"),
        "batch_size": S(64, PR, "shuffled every epoch; a last batch of one image joins the one before (ours)"),
        "warmup": S(0, PR, "no warm-up"),
        "schedule": S("constant", PR, "no schedule"),
        "patience": S(0, PR, "all epochs run"),
        "select": S("last", PR, "the model after the last epoch is tested: nothing is chosen on val"),
        "augment": S("none", PR, "ToTensor then Normalize: no augmentation"),
        "normalize": S("half", PR, "Normalize(mean=[0.5], std=[0.5])"),
        "grad_clip": S(0.0, PR, "no clipping"),
    },
    (
        N("model", "Conv2d(3x3, padding 1; 16, 32, 64) -> BatchNorm2d -> ReLU -> MaxPool2d(2, 2), three times; "
          "Flatten -> Linear(576, 128) -> ReLU -> Linear(128, classes)",
          "simplecnn --unfreeze all --head linear (97,634 parameters for 1 channel, 28 px, 2 classes)", PR),
        N("grayscale", "1 input channel", "1 input channel (simplecnn takes the dataset's own channel count)", PR),
        N("loss and optimizer", "CrossEntropyLoss; torch Adam", "cross-entropy; torch AdamW with 0 weight decay", PR),
        N("seeds", "one run (one number is reported)", "seeds 0, 1, 2", PR),
    ),
)
RECIPES: dict[str, Recipe] = {r.name: r for r in (MEDFM, PAPER, MEDMNISTPLUS, MEDMNIST_V2, PRIMER)}
RECIPE_NAMES: tuple[str, ...] = tuple(RECIPES)
del S, N


def get(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown recipe {name!r}; {did_you_mean(name, RECIPE_NAMES)}") from None


def fill(given: dict[str, Any]) -> dict[str, Any]:
    """``given`` (explicit options, None = not given) with its recipe's values under it:
    explicit > recipe; what neither sets keeps its option default later."""
    recipe = get(given.get("recipe") or "medfm")
    return {**recipe.values(), **{k: v for k, v in given.items() if v is not None}}


def provenance(cfg: Any) -> dict[str, Any]:
    """What the config's recipe set, derived from the config alone: values taken, values an explicit
    option replaced (recipe's -> used), and values the run's protocol does not read."""
    recipe = get(cfg.recipe)
    taken, replaced, unused = {}, {}, []
    for k, v in recipe.values().items():
        used = getattr(cfg, k)
        if used is None:
            unused.append(k)
        elif used == v:
            taken[k] = v
        else:
            replaced[k] = [v, used]
    return {"name": recipe.name, "set": taken, "overridden": replaced, "not_used": unused}
