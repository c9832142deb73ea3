"""Tiny random Qwen vision-language stand-ins (the real transformers classes), built offline.

The GenEval2 judge is Qwen3-VL-8B-Instruct; its stand-in is a `Qwen3VLForConditionalGeneration`
of ~0.25 M parameters with a real `Qwen3VLProcessor` around a byte-level `Qwen2Tokenizer` (no
merges: every text tokenises to bytes; "<|...|>" specials as Qwen's) and a short chat template of
Qwen's shape. Nothing is downloaded. Scores from it mean nothing: it runs the real code path.

transformers 5 needs `mm_token_type_ids` beside `image_grid_thw` in the model call; the processor
returns it, so inputs always come from the processor.
"""

from __future__ import annotations

from typing import Any, Sequence

from torch import nn

from rtdmd_bench.rewards.tiny import _byte_symbols, seeded

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>")
"""Qwen's special tokens the chat template and the vision processors use."""

STAND_IN_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
"""Qwen's chat layout (roles between <|im_start|> and <|im_end|>, the image placeholder, the
assistant turn opened by the generation prompt), without the real template's system turn."""


def tiny_qwen_tokenizer(extra_specials: Sequence[str] = ()) -> Any:
    """A real `Qwen2Tokenizer` over the 256 byte-level symbols with no merges, plus Qwen's specials
    (and `extra_specials`, e.g. HPSv3's "<|Reward|>"). " Yes" -> ["Ġ", "Y", "e", "s"]."""
    from transformers import Qwen2Tokenizer

    tok = Qwen2Tokenizer(vocab={s: i for i, s in enumerate(_byte_symbols())}, merges=[], unk_token=None,
                         bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": [*QWEN_SPECIALS, *extra_specials]})
    return tok


def tiny_qwen3vl(seed: int) -> tuple[nn.Module, Any]:
    """(Qwen3VLForConditionalGeneration, Qwen3VLProcessor), tiny, random, seeded, float32.

    Sizes as in the issue-12 spec (section 10): text 2 layers x 64 wide (4 heads, 2 KV heads,
    head_dim 16, interleaved M-RoPE [2, 3, 3]); vision 2 layers x 32 wide, 16-px patches merged
    2x2, deepstack after both layers. The image processor keeps Qwen3-VL's mean = std = 0.5 and
    its factor 32, with a pixel budget of 32^2..64^2 so a tiny-sd3 image is one visual token."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = tiny_qwen_tokenizer()
    ids = tok.convert_tokens_to_ids
    cfg = Qwen3VLConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=4096,
                         rope_parameters=dict(rope_type="default", rope_theta=5e6, mrope_section=[2, 3, 3],
                                              mrope_interleaved=True),
                         bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                         pad_token_id=ids("<|endoftext|>")),
        vision_config=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, patch_size=16,
                           spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=64,
                           num_position_embeddings=64, deepstack_visual_indexes=[0, 1]),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))
    model = seeded(seed, lambda: Qwen3VLForConditionalGeneration(cfg)).eval()
    images = Qwen2VLImageProcessor(patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3,
                                   image_std=[0.5] * 3, min_pixels=32 * 32, max_pixels=64 * 64)
    processor = Qwen3VLProcessor(image_processor=images, tokenizer=tok, video_processor=Qwen3VLVideoProcessor(),
                                 chat_template=STAND_IN_CHAT_TEMPLATE)
    return model, processor

