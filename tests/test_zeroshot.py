"""Zero-shot heads (--head zeroshot, --head linear --init zeroshot): class embeddings equal
CLIP_benchmark's own zero_shot_classifier (the clip-benchmark package, called here), logits equal
open_clip's encode_image / encode_text path x the logit scale, ACC and AUC equal exactly; prompts
are versioned data whose hash is in the run id; backbones without a text tower refuse in one line."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import backbones
from bench import api, metrics, prompts, zeroshot
from bench.errors import UserError

zsc = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification",
                          reason="clip-benchmark (pip install --no-deps clip-benchmark; setup.sh does)")

CLASSES = ["a malignant breast tumor", "normal or benign breast tissue", "a cyst"]
TEMPLATES = ["a breast ultrasound image showing {c}.", "a photo of {c}.", "{c}"]


class _Texts(list):
    def to(self, device):
        return self


class _Encoder:
    """What CLIP_benchmark's zero_shot_classifier calls: ``model.encode_text(tokenizer(texts))``."""

    def __init__(self, encode):
        self.encode_text = encode


def cb_classifier(encode, classes, templates) -> torch.Tensor:
    """CLIP_benchmark's zero_shot_classifier on a text tower's encode: (D, C)."""
    return zsc.zero_shot_classifier(_Encoder(encode), _Texts, classes, templates, "cpu", amp=False)


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory):
    """A tiny open_clip CLIP (random, seeded) and its checkpoint file, full layout (visual + text)."""
    from open_clip.model import CLIP

    from backbones.clip import TINY_CFG

    torch.manual_seed(1)
    model = CLIP(**TINY_CFG).eval()
    with torch.no_grad():
        model.logit_scale.fill_(float(np.log(100.0)))  # as OpenAI CLIP's checkpoints: exp() = 100
    path = tmp_path_factory.mktemp("clip") / "open_clip_pytorch_model.bin"
    torch.save(model.state_dict(), path)
    return model, str(path)


def test_clip_class_embeddings_equal_clip_benchmark(clip_pair):
    import open_clip

    model, path = clip_pair
    tower = backbones.build("clip", "tiny", weights=path, readout="proj").text_tower()
    ours = zeroshot.build_classifier(tower.encode, tuple(CLASSES), tuple(TEMPLATES), tower.logit_scale)
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    theirs = zsc.zero_shot_classifier(model, tok, CLASSES, TEMPLATES, "cpu", amp=False)  # the real model
    assert torch.allclose(ours.weights, theirs.t(), atol=1e-6)
    assert tower.logit_scale == pytest.approx(100.0, rel=1e-6)  # the checkpoint's logit_scale.exp()


def test_clip_logits_equal_open_clip_encode_path(clip_pair):
    import open_clip

    model, path = clip_pair
    b = backbones.build("clip", "tiny", weights=path, readout="proj", input_size=32).eval()
    tower = b.text_tower()
    clf = zeroshot.build_classifier(tower.encode, tuple(CLASSES), tuple(TEMPLATES), tower.logit_scale)
    x = torch.randn(40, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    tok = open_clip.tokenizer.SimpleTokenizer(context_length=77)
    with torch.no_grad():
        feats = b(x).numpy()
        img = model.encode_image(x, normalize=True)
        txt = torch.stack([F.normalize(F.normalize(model.encode_text(tok([t.format(c=c) for t in TEMPLATES])), dim=-1)
                                       .mean(0), dim=-1) for c in CLASSES])
        logits = model.logit_scale.exp() * img @ txt.t()
    ours = clf.scores(feats)
    want = logits.softmax(-1).numpy()
    assert np.allclose(ours, want, atol=1e-5)
    y = np.arange(40) % 3
    assert metrics.acc("multi-class", y, ours) == metrics.acc("multi-class", y, want)
    assert metrics.auc("multi-class", y, ours) == metrics.auc("multi-class", y, want)


def test_multilabel_pairs_score_positive_against_negative():
    torch.manual_seed(0)
    table = {}

    def encode(texts):
        return torch.stack([table.setdefault(t, torch.randn(8)) for t in texts])

    pairs = (("effusion", "no effusion"), ("edema", "no edema"))
    clf = zeroshot.build_classifier(encode, pairs, ("a chest x-ray showing {c}.", "{c}"), 50.0)
    assert clf.multilabel and clf.weights.shape == (2, 2, 8)
    feats = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    f = F.normalize(torch.as_tensor(feats), dim=-1)
    for label, (pos, neg) in enumerate(pairs):
        want_pos = cb_classifier(encode, [pos], ["a chest x-ray showing {c}.", "{c}"])[:, 0]
        want_neg = cb_classifier(encode, [neg], ["a chest x-ray showing {c}.", "{c}"])[:, 0]
        want = torch.sigmoid(50.0 * (f @ want_pos - f @ want_neg)).numpy()
        assert np.allclose(clf.scores(feats)[:, label], want, atol=1e-6)
    # --init zeroshot's linear head gives the same scores (sigmoid of s x (pos - neg))
    w, bias = clf.linear_init()
    assert np.allclose(torch.sigmoid(f @ w.t() + bias).numpy(), clf.scores(feats), atol=1e-6)


SAMPLES = Path(__file__).resolve().parents[1] / "bench" / "samples" / "medmnist"  # the real BreastMNIST, shipped


def test_done_when_bench_run_equals_clip_benchmark(tmp_path):
    """`bench run --backbone clip --weights random --head zeroshot --dataset breastmnist` (the tiny
    variant): its scores are CLIP_benchmark's construction on the same model, ACC/AUC exactly."""
    from bench.assemble import open_context
    from bench.resolve import bind_data
    from bench.run_config import make_run_options

    data_root = SAMPLES
    kw = dict(variant="tiny", weights="random", head="zeroshot", input_size=32, results_dir=tmp_path / "r",
              data_root=data_root, quiet=True)
    res = api.run("clip", "breastmnist", **kw)
    assert res.config.readout == "proj" and res.config.prompts.startswith("breastmnist#")
    assert res.meta["trainable_parameters"]["total"] == 0
    zs = res.meta["zeroshot"]
    assert len(zs["per_template"]) == len(prompts.builtin("breastmnist").templates)
    assert zs["template_spread"]["test_auc"]["min"] <= zs["template_spread"]["test_auc"]["max"]
    # the same model, rebuilt; its cached features; CLIP_benchmark's classifier
    cfg = bind_data(res.config, make_run_options(data_root=data_root))
    ctx = open_context(cfg, make_run_options(data_root=data_root, quiet=True))
    tower = ctx.model.text_tower()
    pset = prompts.builtin("breastmnist")
    w = cb_classifier(tower.encode, list(pset.classes), list(pset.templates))
    feats = torch.as_tensor(ctx.readout_features("test"))
    want = (tower.logit_scale * F.normalize(feats, dim=-1) @ w).softmax(-1).numpy()
    y, got = ctx.dataset.targets("test"), None
    from bench.results import ResultStore

    y_saved, got = ResultStore(tmp_path / "r").read_scores(res.run_id)
    assert np.allclose(got, want, atol=1e-5)
    assert res.metric("acc") == metrics.acc("binary-class", y, want)
    assert res.metric("auc") == metrics.auc("binary-class", y, want)


def test_init_zeroshot_starts_at_the_zero_shot_scores(data_root, tmp_path):
    kw = dict(variant="tiny", weights="random", input_size=32, results_dir=tmp_path / "r", data_root=data_root,
              skip_md5=True, quiet=True)
    zs = api.run("clip", "breastmnist", head="zeroshot", **kw)
    init = api.run("clip", "breastmnist", head="linear", init="zeroshot", head_epochs=3, **kw)
    assert init.config.protocol.name == "zeroshot-init" and init.config.readout == "proj"
    curves = __import__("pandas").read_csv(init.paths["curves"])
    epoch0 = curves[(curves.epoch == 0) & (curves.metric == "auc")]
    assert len(epoch0) == len(zeroshot.INIT_LRS) * len(zeroshot.INIT_WDS)
    assert np.allclose(epoch0.value, zs.metric("auc", "val"), atol=1e-12)
    acc0 = curves[(curves.epoch == 0) & (curves.metric == "acc")]
    assert np.allclose(acc0.value, zs.metric("acc", "val"), atol=1e-12)
    # the kernel itself: with no epoch the selected head is the zero-shot classifier
    torch.manual_seed(0)
    table = {}

    def encode(texts):
        return torch.stack([table.setdefault(t, torch.randn(8)) for t in texts])

    clf = zeroshot.build_classifier(encode, ("a", "b", "c"), ("{c}", "x {c}"), 30.0)
    rng = np.random.default_rng(0)
    xt, xv = rng.normal(size=(30, 8)), rng.normal(size=(20, 8))
    yt, yv = rng.integers(0, 3, (30, 1)), rng.integers(0, 3, 20)
    r = zeroshot.train_from_zeroshot(clf, xt, yt, xv, yv, "multi-class", epochs=0, batch_size=8, select="auc", seed=0)
    assert r.epoch == 0 and np.allclose(r.scores(xv), clf.scores(xv), atol=1e-6)


def test_prompt_hash_in_run_id_and_other_ids_unchanged(tmp_path):
    base = api.config("clip", "breastmnist", variant="tiny", weights="random", head="zeroshot")
    again = api.config("clip", "breastmnist", variant="tiny", weights="random", head="zeroshot")
    assert base.run_id == again.run_id
    own = tmp_path / "p.yaml"
    own.write_text("templates: ['an ultrasound of {c}.']\n")
    other = api.config("clip", "breastmnist", variant="tiny", weights="random", head="zeroshot", prompts=str(own))
    assert other.run_id != base.run_id and other.prompts.endswith("#" + prompts.find("breastmnist", str(own)).digest)
    own.write_text("templates: ['an ultrasound image of {c}.']\n")
    edited = api.config("clip", "breastmnist", variant="tiny", weights="random", head="zeroshot", prompts=str(own))
    assert edited.run_id != other.run_id
    # an unused option never enters other protocols' ids
    linear = api.config("clip", "breastmnist", variant="tiny", weights="random")
    assert linear.init == "none" and linear.prompts is None and "init" not in linear.id_dict()


def test_refusals_are_one_line(tmp_path):
    with pytest.raises(UserError, match="needs a text tower: dummy"):
        api.config("dummy", "breastmnist", head="zeroshot")
    with pytest.raises(UserError, match="reads the image embedding.*--readout proj"):
        api.config("clip", "breastmnist", variant="tiny", head="zeroshot", readout="cls")
    with pytest.raises(UserError, match="--init zeroshot starts a linear probe"):
        api.config("clip", "breastmnist", variant="tiny", head="knn", init="zeroshot")
    with pytest.raises(UserError, match="uses no train image"):
        api.config("clip", "breastmnist", variant="tiny", head="zeroshot", shots=5)
    with pytest.raises(UserError, match="trains nothing"):
        api.config("clip", "breastmnist", variant="tiny", head="zeroshot", unfreeze="last1")
    bad = tmp_path / "bad.yaml"
    bad.write_text("templates: ['no placeholder']\n")
    with pytest.raises(UserError, match=r"\{c\}"):
        api.config("clip", "breastmnist", variant="tiny", head="zeroshot", prompts=str(bad))
    with pytest.raises(UserError, match="3 class names for breastmnist's 2 classes"):
        prompts.PromptSet("x", ("a", "b", "c"), ("{c}",)).check(2, False, "breastmnist")
    b = backbones.build("dummy", weights="random")
    with pytest.raises(UserError, match="needs a text tower"):
        b.text_tower()


def test_prompt_sets_are_data_for_every_dataset():
    from medmnist import INFO

    flags = [f for f in INFO if not f.endswith("3d")]
    assert len(flags) == 12
    for name in flags + ["aptos2019", "isic2019", "cbis-ddsm", "chexpert", "chexpert14"]:
        s = prompts.builtin(name)
        assert s is not None and s.sources and len(s.templates) >= 3, name
        if name in INFO:
            multilabel = INFO[name]["task"].startswith("multi-label")
            s.check(len(INFO[name]["label"]), multilabel, name)
    out = subprocess.run([sys.executable, "-m", "bench.cli", "ls", "prompts", "chestmnist"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "against: no pneumothorax" in out.stdout and "hash" in out.stdout
    # own data: its class names, the generic templates; multi-label as NAME against 'no NAME'
    g = prompts.find("folder:/x").with_classes(["benign", "malignant"], False)
    assert g.classes == ("benign", "malignant") and g.templates == prompts.GENERIC_TEMPLATES


def test_biomedclip_shaped_model_equals_clip_benchmark_and_open_clip(tmp_path):
    """A BiomedCLIP-shaped checkpoint (timm ViT trunk + projection, open_clip HFTextEncoder with a BERT,
    MLP projection, CLS pooling): our class embeddings are CLIP_benchmark's on open_clip's own encoder,
    the logits its logit scale x cosine, ACC and AUC exactly."""
    from open_clip.hf_model import HFTextEncoder
    from open_clip.tokenizer import HFTokenizer
    from transformers import BertConfig

    from backbones.biomedclip import TEXT_POOLER, TEXT_PROJ, TINY_BERT, TINY_VOCAB, tiny_tokenizer_dir

    torch.manual_seed(3)
    image = backbones.build("biomedclip", "tiny", weights="random", readout="proj", input_size=32)
    text = HFTextEncoder("bert", output_dim=16, config=BertConfig(vocab_size=len(TINY_VOCAB), **TINY_BERT),
                         pooler_type=TEXT_POOLER, proj_type=TEXT_PROJ, pretrained=False).eval()
    sd = {f"visual.trunk.{k}": v for k, v in image.state_dict().items() if k != "proj.weight"}
    sd["visual.head.proj.weight"] = image.proj.weight.detach()
    sd.update({f"text.{k}": v for k, v in text.state_dict().items() if not k.startswith("transformer.pooler.")})
    sd["logit_scale"] = torch.tensor(float(np.log(40.0)))
    path = tmp_path / "open_clip_pytorch_model.bin"
    torch.save(sd, path)

    b = backbones.build("biomedclip", "tiny", weights=str(path), readout="proj", input_size=32).eval()
    tower = b.text_tower()
    assert tower.logit_scale == pytest.approx(40.0, rel=1e-6)
    ours = zeroshot.build_classifier(tower.encode, tuple(CLASSES), tuple(TEMPLATES), tower.logit_scale)
    tok = HFTokenizer(str(tiny_tokenizer_dir()), context_length=TINY_BERT["max_position_embeddings"])
    theirs = zsc.zero_shot_classifier(_Encoder(text), tok, CLASSES, TEMPLATES, "cpu", amp=False)
    assert torch.allclose(ours.weights, theirs.t(), atol=1e-6)
    x = torch.randn(30, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = b(x)
        assert torch.allclose(feats, image(x), atol=1e-5)  # the image tower loaded back from the file
        want = (40.0 * F.normalize(feats, dim=-1) @ theirs).softmax(-1).numpy()
    got = ours.scores(feats.numpy())
    assert np.allclose(got, want, atol=1e-5)
    y = np.arange(30) % 3
    assert metrics.acc("multi-class", y, got) == metrics.acc("multi-class", y, want)
    assert metrics.auc("multi-class", y, got) == metrics.auc("multi-class", y, want)


def test_hub_tokenizers_refuse_offline_in_one_line():
    b = backbones.build("biomedclip", "vitb16", weights="random", readout="proj")
    with pytest.raises(UserError, match=r"config.json, vocab.txt, tokenizer_config.json of microsoft/BiomedNLP") as e:
        b.text_tower()
    assert "\n" not in str(e.value)


def test_blip_itc_zero_shot(tmp_path, data_root):
    """BLIP base's image-text contrastive side: vision_proj readout, BERT text encoder in text mode ->
    text_proj, similarity / temp; loaded from a model_base.pth-shaped checkpoint; captioning refuses."""
    from transformers import BertTokenizer, BlipTextConfig, BlipTextModel

    from backbones.blip import TINY_TEXT
    from backbones.biomedclip import TINY_VOCAB, tiny_tokenizer_dir

    torch.manual_seed(5)
    image = backbones.build("blip", "tiny", weights="random", readout="proj", input_size=32)
    text = BlipTextModel(BlipTextConfig(**TINY_TEXT, vocab_size=len(TINY_VOCAB), pad_token_id=0, bos_token_id=None,
                                        sep_token_id=None, eos_token_id=None), add_pooling_layer=False).eval()
    text_proj = torch.nn.Linear(16, 16)
    sd = {f"visual_encoder.{k}": v for k, v in image.state_dict().items() if not k.startswith("vision_proj.")}
    sd = {("visual_encoder.encoder.layers." + k[len("visual_encoder.blocks."):]) if k.startswith("visual_encoder.blocks.")
          else k: v for k, v in sd.items()}
    sd = {k.replace("visual_encoder.", "vision_model."): v for k, v in sd.items()}  # transformers layout
    sd.update({f"vision_proj.{k}": v for k, v in image.vision_proj.state_dict().items()})
    sd.update({f"text_encoder.{k}": v for k, v in text.state_dict().items()})
    sd.update({f"text_proj.{k}": v for k, v in text_proj.state_dict().items()})
    sd["temp"] = torch.tensor(0.05)
    path = tmp_path / "model_base.pth"
    torch.save(sd, path)
    b = backbones.build("blip", "tiny", weights=str(path), readout="proj", input_size=32).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(b(x), image(x), atol=1e-5)
    tower = b.text_tower()
    assert tower.logit_scale == pytest.approx(20.0)
    tok = BertTokenizer.from_pretrained(str(tiny_tokenizer_dir()))
    t = tok(TEMPLATES, padding="max_length", truncation=True, max_length=35, return_tensors="pt")
    with torch.no_grad():
        want = text_proj(text(input_ids=t.input_ids, attention_mask=t.attention_mask).last_hidden_state[:, 0])
    assert torch.allclose(tower.encode(TEMPLATES), want, atol=1e-5)
    with pytest.raises(UserError, match="needs a text tower: blip@captioning-base is a captioning model"):
        api.config("blip", "breastmnist", variant="captioning-base", head="zeroshot")
    with pytest.raises(UserError, match="captioning model without BLIP's image-text contrastive"):
        backbones.build("blip", "captioning-base", weights="random", readout="proj")
    with pytest.raises(UserError, match="vocab.txt, tokenizer_config.json of bert-base-uncased"):
        backbones.build("blip", "base", weights="random", readout="proj").text_tower()
    res = api.run("blip", "breastmnist", variant="tiny", weights="random", head="zeroshot", input_size=32,
                  results_dir=tmp_path / "r", data_root=data_root, skip_md5=True, quiet=True)
    assert res.config.readout == "proj" and 0 <= res.metric("auc") <= 1


def test_report_starts_label_efficiency_at_zero_labels(data_root, tmp_path):
    """A report holding zero-shot and shot runs: each label-efficiency curve starts at 0 labels (the
    zero-shot run), zero-shot rows are in the tables with their template interval, and 'How much
    adaptation' has its 0-trainable-parameter end."""
    import pandas as pd

    from bench.report import make_report

    kw = dict(variant="tiny", weights="random", input_size=32, results_dir=tmp_path / "r", data_root=data_root,
              skip_md5=True, quiet=True)
    api.run("clip", "breastmnist", head="zeroshot", **kw)
    for shots in (2, 5):
        api.run("clip", "breastmnist", head="linear", init="zeroshot", shots=shots, head_epochs=2, **kw)
    api.run("clip", "breastmnist", head="linear", init="zeroshot", head_epochs=2, **kw)
    out = tmp_path / "report"
    make_report(tmp_path / "r", out, formats=("md", "png"), n_boot=50)
    t = pd.read_csv(out / "tables" / "label_efficiency.csv")
    assert t.per_class.min() == 0.0 and set(t.budget) == {"zeroshot", "shots", "all"}
    assert (out / "figures" / "metric_vs_labels.png").exists()
    z = pd.read_csv(out / "tables" / "zeroshot_templates.csv")
    assert len(z) == 1 and z["min"].iloc[0] <= z["max"].iloc[0]
    md = (out / "report.md").read_text()
    assert "Zero labels: zero-shot from prompts" in md and "0 (zero-shot)" in md
    assert (out / "figures" / "metric_vs_trainable_parameters.png").exists()
