"""Tiny random vision- and audio-language models, saved with their processors (no network).

Each family gets a BPE tokenizer with its placeholder tokens, a chat template that places media
before the text of a user turn (as the real checkpoints' templates do), a random model from a
config, and its real processor class. Qwen2-VL's processor cannot be built without torchvision,
so for it the tokenizer, the image processor and a ``processor_config.json`` naming the class are
saved, exactly the files a real checkpoint has; :func:`probe.multimodal.processors.load_processor` then
builds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.tiny import CORPUS

VLM_FAMILIES = ("llava", "qwen2_vl", "qwen2_5_vl", "gemma3", "qwen2_audio")

_MEDIA = {  # family -> (special tokens, chat-template text for one image / audio item)
    "llava": (["<image>"], "<image>\n"),
    "qwen2_vl": (["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
                 "<|vision_start|><|image_pad|><|vision_end|>"),
    "qwen2_5_vl": (["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
                   "<|vision_start|><|image_pad|><|vision_end|>"),
    "gemma3": (["<start_of_image>", "<end_of_image>", "<image_soft_token>"], "<start_of_image>"),
    "qwen2_audio": (["<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"],
                    "<|audio_bos|><|AUDIO|><|audio_eos|>"),
}


def chat_template(item: str) -> str:
    return (
        "{% for m in messages %}<|{{ m['role'] }}|>"
        "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
        "{% for c in m['content'] %}{% if c['type'] in ('image', 'audio') %}"
        + item.replace("\n", "\\n")
        + "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}</s>{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>{% endif %}"
    ).replace("\\n", "\n")


def make_tokenizer(family: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials, item = _MEDIA[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    base = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=base + specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    extra = {}
    if family == "gemma3":
        extra = {"extra_special_tokens": {"boi_token": "<start_of_image>",
                                          "eoi_token": "<end_of_image>",
                                          "image_token": "<image_soft_token>"}}
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", **extra)
    fast.chat_template = chat_template(item)
    return fast


def _text(cls, tok, **extra):
    return cls(vocab_size=len(tok), num_hidden_layers=3, hidden_size=64, intermediate_size=128,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
               pad_token_id=0, bos_token_id=1, eos_token_id=2, **extra)


def build(family: str):
    """(model, processor or None, tokenizer, image processor or None) of a tiny random model."""
    import transformers as tf

    tok = make_tokenizer(family)
    tid = tok.convert_tokens_to_ids
    if family == "llava":
        vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, image_size=32, patch_size=8)
        cfg = tf.LlavaConfig(vision_config=vision, text_config=_text(tf.LlamaConfig, tok),
                             image_token_index=tid("<image>"), vision_feature_layer=-1,
                             vision_feature_select_strategy="default")
        ip = tf.CLIPImageProcessor(size={"shortest_edge": 32},
                                   crop_size={"height": 32, "width": 32})
        proc = tf.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=8,
                                 vision_feature_select_strategy="default",
                                 num_additional_image_tokens=1, image_token="<image>",
                                 chat_template=tok.chat_template)
    elif family in ("qwen2_vl", "qwen2_5_vl"):
        vision = dict(depth=2, embed_dim=32, hidden_size=64, num_heads=4, mlp_ratio=2,
                      patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
        if family == "qwen2_5_vl":
            vision = dict(depth=2, hidden_size=32, out_hidden_size=64, intermediate_size=64,
                          num_heads=4, patch_size=14, spatial_merge_size=2, temporal_patch_size=2,
                          window_size=56, fullatt_block_indexes=[1])
        text = dict(vocab_size=len(tok), num_hidden_layers=3, hidden_size=64,
                    intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                    max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]})
        cls = tf.Qwen2VLConfig if family == "qwen2_vl" else tf.Qwen2_5_VLConfig
        cfg = cls(text_config=text, vision_config=vision,
                               image_token_id=tid("<|image_pad|>"),
                               video_token_id=tid("<|video_pad|>"),
                               vision_start_token_id=tid("<|vision_start|>"),
                               vision_end_token_id=tid("<|vision_end|>"))
        ip = tf.Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=56 * 56 * 4, patch_size=14,
                                         merge_size=2, temporal_patch_size=2)
        proc = None
    elif family == "gemma3":
        vision = tf.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=4, image_size=32, patch_size=8)
        text = _text(tf.Gemma3TextConfig, tok, head_dim=16, sliding_window=16,
                     layer_types=["sliding_attention", "full_attention", "sliding_attention"])
        cfg = tf.Gemma3Config(vision_config=vision, text_config=text, mm_tokens_per_image=4,
                              boi_token_index=tid("<start_of_image>"),
                              eoi_token_index=tid("<end_of_image>"),
                              image_token_index=tid("<image_soft_token>"))
        ip = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
        proc = tf.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4,
                                  chat_template=tok.chat_template)
    elif family == "qwen2_audio":
        audio = tf.Qwen2AudioEncoderConfig(d_model=32, encoder_layers=2, encoder_attention_heads=4,
                                           encoder_ffn_dim=64, num_mel_bins=16,
                                           max_source_positions=50)
        cfg = tf.Qwen2AudioConfig(audio_config=audio, text_config=_text(tf.Qwen2Config, tok),
                                  audio_token_index=tid("<|AUDIO|>"))
        ip = tf.WhisperFeatureExtractor(feature_size=16, sampling_rate=16000, hop_length=160,
                                        chunk_length=1, n_fft=400)
        proc = tf.Qwen2AudioProcessor(feature_extractor=ip, tokenizer=tok,
                                      chat_template=tok.chat_template)
    else:
        raise ValueError(family)
    torch.manual_seed(0)
    model = tf.AutoModelForMultimodalLM.from_config(cfg)
    with torch.no_grad():  # as in tests/tiny.py: make the layers do real work
        model.get_input_embeddings().weight.mul_(20)
        # ... and give image/audio features the embeddings' scale (random projectors are tiny)
        last = [p for n, p in model.named_parameters()
                if ("multi_modal_projector" in n or "merger" in n) and p.dim() == 2][-1]
        if not last.any():  # Gemma 3 initialises its projection to zeros
            last.normal_(0.0, 0.02)
        last.mul_(20)
    return model.eval(), proc, tok, ip


def save_tiny_vlm(family: str, root: Path) -> Path:
    """Save a tiny model of ``family`` with its processor files under ``root/family``."""
    model, proc, tok, ip = build(family)
    path = root / family
    model.save_pretrained(path)
    if proc is not None:
        proc.save_pretrained(path)
    else:  # the files a real Qwen2-VL checkpoint has
        tok.save_pretrained(path)
        ip.save_pretrained(path)
        (path / "chat_template.jinja").write_text(tok.chat_template)
        name = {"qwen2_vl": "Qwen2VLProcessor", "qwen2_5_vl": "Qwen2_5_VLProcessor"}[family]
        (path / "processor_config.json").write_text(json.dumps({"processor_class": name}))
    return path


def make_image(color, size=(40, 30)):
    from PIL import Image

    return Image.new("RGB", size, color)


def make_wave(seconds: float = 0.5, freq: float = 220.0, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
