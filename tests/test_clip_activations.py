"""Every OpenAI-weights CLIP is built with its reference's MLP activation (issue #10, item 8).

OpenAI trained its CLIP weights with QuickGELU, x * sigmoid(1.702 x). GenEval's scorer (open_clip
2.20, pretrained="openai") builds ViT-L/14 that way; RTDMD's (open_clip 3.3.0, ("ViT-L-14",
"openai")) gets plain GELU. transformers' CLIPModel takes `hidden_act` from the checkpoint's
config.json ("quick_gelu" in OpenAI's hub configs). No weights are available offline, so every
builder is run with a tiny architecture through its own code path and the activation it built is
identified by probing it against the two formulas written out here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from rtdmd_bench.rewards.loading import clear_model_cache

PROBE = torch.linspace(-3, 3, 13)


def activation_kind(act: nn.Module) -> str:
    """"quick_gelu" or "gelu", by comparing with the formulas (not with the library's own modules)."""
    out = act(PROBE)
    quick = PROBE * torch.sigmoid(1.702 * PROBE)
    erf_gelu = torch.tensor([0.5 * x * (1 + math.erf(x / math.sqrt(2))) for x in PROBE.tolist()])
    if torch.allclose(out, quick, atol=1e-6):
        return "quick_gelu"
    if torch.allclose(out, erf_gelu, atol=1e-6):
        return "gelu"
    return "other"


def open_clip_activations(model: nn.Module) -> set[str]:
    """Activation kinds of every MLP of both towers of an open_clip CLIP."""
    blocks = [*model.visual.transformer.resblocks, *model.transformer.resblocks]
    assert len(blocks) >= 2
    return {activation_kind(block.mlp.gelu) for block in blocks}


def hf_clip_activations(model: nn.Module) -> set[str]:
    """Activation kinds of every CLIPMLP (text and vision) of a transformers CLIPModel."""
    from transformers.models.clip.modeling_clip import CLIPMLP

    mlps = [m for m in model.modules() if isinstance(m, CLIPMLP)]
    assert len(mlps) >= 2
    return {activation_kind(m.activation_fn) for m in mlps}


def test_the_probe_tells_the_two_activations_apart():
    assert activation_kind(nn.GELU()) == "gelu"
    assert activation_kind(nn.Identity()) == "other"
    assert float((PROBE * torch.sigmoid(1.702 * PROBE) - nn.GELU()(PROBE)).abs().max()) > 1e-2


# --- GenEval's colour CLIP (open_clip) ----------------------------------------------------------

@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_open_clip_builder_builds_the_activation_asked_for(activation):
    from rtdmd_bench.geneval.models import TINY_CLIP_ARCH, open_clip_vit_l14

    assert open_clip_activations(open_clip_vit_l14("", activation, **TINY_CLIP_ARCH)) == {activation}


@pytest.fixture()
def tiny_open_clip_sources(monkeypatch):
    """open_clip.create_model builds the tiny architecture with no weights, recording the source
    it was asked for; everything else (model name, force_quick_gelu) passes through unchanged.
    open_clip 3.x takes the activation from the model config and force_quick_gelu only (a tag's
    own quick_gelu flag merely warns), so dropping the weights does not change it."""
    import open_clip

    from rtdmd_bench.geneval.models import TINY_CLIP_ARCH

    real, sources = open_clip.create_model, []

    def tiny(model_name, pretrained=None, require_pretrained=False, **kwargs):
        sources.append(pretrained)
        return real(model_name, pretrained=None, **{**kwargs, **TINY_CLIP_ARCH})

    monkeypatch.setattr(open_clip, "create_model", tiny)
    return sources


@pytest.mark.parametrize("clip_path", ["", "/weights/ViT-L-14-openai.bin"])
def test_geneval_suite_uses_quick_gelu_whatever_the_weights_source(tiny_open_clip_sources, clip_path, monkeypatch):
    from rtdmd_bench.geneval import models
    from suites.geneval import GenEval

    monkeypatch.setattr(models, "load_mask2former", lambda source, local_only: models.tiny_mask2former(0))
    suite = GenEval(GenEval.Config(clip_path=clip_path))
    _, colour = suite.models()
    assert tiny_open_clip_sources == [clip_path or "openai"]  # hub tag or local file
    assert open_clip_activations(colour.model) == {"quick_gelu"}


def test_geneval_suite_stand_in_uses_quick_gelu():
    from suites.geneval import GenEval

    _, colour = GenEval(GenEval.Config(models="stand-in")).models()
    assert open_clip_activations(colour.model) == {"quick_gelu"}


def write_metadata(path):
    row = {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"}
    path.write_text(json.dumps(row) + "\n")
    return str(path)


@pytest.mark.parametrize("switch,expected", [(None, "gelu"), ("gelu", "gelu"), ("quick_gelu", "quick_gelu")])
def test_geneval_partial_reward_keeps_rtdmds_gelu_unless_switched(tiny_open_clip_sources, monkeypatch, tmp_path,
                                                                  switch, expected):
    from rtdmd_bench.geneval import models
    from rtdmd_bench.rewards.geneval_partial import GenevalPartial

    clear_model_cache()
    monkeypatch.setattr(models, "load_mask2former", lambda source, local_only: models.tiny_mask2former(0))
    extra = {} if switch is None else {"colour_clip_activation": switch}
    reward = GenevalPartial(GenevalPartial.Config(metadata_path=write_metadata(tmp_path / "m.jsonl"), **extra))
    assert tiny_open_clip_sources == ["openai"]
    assert open_clip_activations(reward._models()[1].model) == {expected}
    assert reward.name == ("geneval-partial[quickgelu-clip]" if expected == "quick_gelu" else "geneval-partial")
    clear_model_cache()


@pytest.mark.parametrize("switch,expected", [(None, "gelu"), ("quick_gelu", "quick_gelu")])
def test_geneval_partial_stand_in_follows_the_switch(tmp_path, switch, expected):
    from rtdmd_bench import registry

    clear_model_cache()
    cls = registry.resolve("rewards", "tiny-geneval-partial")
    extra = {} if switch is None else {"colour_clip_activation": switch}
    reward = cls(cls.Config(metadata_path=write_metadata(tmp_path / "m.jsonl"), **extra))
    assert open_clip_activations(reward._models()[1].model) == {expected}
    clear_model_cache()


# --- transformers CLIPModel: clipscore and aesthetic (OpenAI ViT-L/14) ---------------------------

def save_openai_style_clip_folder(path, hidden_act: str):
    """A tiny CLIPModel saved as a hub snapshot, with `hidden_act` in both towers' configs as
    OpenAI's config.json writes it."""
    from transformers import CLIPConfig, CLIPModel

    from rtdmd_bench.rewards import tiny
    from rtdmd_bench.rewards.clip_based import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    tok = tiny.tiny_clip_tokenizer()
    tower = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                 hidden_act=hidden_act)
    cfg = CLIPConfig(text_config=dict(vocab_size=len(tok), max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **tower),
                     vision_config=dict(image_size=32, patch_size=8, **tower), projection_dim=8)
    CLIPModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({
        "size": {"shortest_edge": 32}, "crop_size": {"height": 32, "width": 32},
        "image_mean": list(OPENAI_CLIP_MEAN), "image_std": list(OPENAI_CLIP_STD), "resample": 3}))
    return path


@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_clipscore_and_aesthetic_build_the_checkpoints_activation(tmp_path, hidden_act):
    """OpenAI's configs say quick_gelu; the loaders must keep what the config says (the gelu
    case shows the test would notice an override)."""
    from rtdmd_bench.rewards.clip_based import Aesthetic, CLIPScore
    from rtdmd_bench.rewards.clip_models import preference_mlp

    clear_model_cache()
    folder = save_openai_style_clip_folder(tmp_path / "clip", hidden_act)
    clipscore = CLIPScore(CLIPScore.Config(local_path=str(folder)))
    assert hf_clip_activations(clipscore.encoder) == {hidden_act}
    mlp = preference_mlp(8)  # on the tiny CLIP's 8-dim embedding, original key layout
    torch.save({f"layers.{k}": v for k, v in mlp.state_dict().items()}, tmp_path / "mlp.pth")
    aesthetic = Aesthetic(Aesthetic.Config(clip_path=str(folder), local_path=str(tmp_path / "mlp.pth")))
    assert hf_clip_activations(aesthetic.encoder) == {hidden_act}
    clear_model_cache()

def test_transformers_clip_stand_in_uses_quick_gelu():
    """tiny-clipscore / tiny-aesthetic stand in for OpenAI ViT-L/14: QuickGELU like it."""
    from rtdmd_bench.rewards import tiny

    assert hf_clip_activations(tiny.tiny_hf_clip(tiny.TinySize()).model) == {"quick_gelu"}
