"""Tiny random models of every supported family, saved and loaded back through the real path."""

from __future__ import annotations

from pathlib import Path

import torch

CORPUS = [
    "I lost my keys again today and the bus left without me.",
    "We won the final! Everyone is cheering in the street.",
    "The meeting is at noon in room four.",
    "Someone stole my bike and laughed at me.",
    "The letter from the hospital finally arrived this morning.",
    "My friend surprised me with a party for my birthday.",
] * 4

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}</s>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gpt2")


def make_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=360, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.chat_template = CHAT_TEMPLATE
    return fast


def make_config(family: str, vocab: int, n_layers: int = 3):
    import transformers as tf

    common = dict(vocab_size=vocab, num_hidden_layers=n_layers, hidden_size=64,
                  intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab, n_layer=n_layers, n_embd=64, n_head=4, n_positions=128,
                             pad_token_id=0, bos_token_id=1, eos_token_id=2)
    cls = {"llama": tf.LlamaConfig, "mistral": tf.MistralConfig, "qwen2": tf.Qwen2Config,
           "qwen3": tf.Qwen3Config, "gemma": tf.GemmaConfig, "gemma2": tf.Gemma2Config,
           "gemma3_text": tf.Gemma3TextConfig}[family]
    extra = {"head_dim": 16} if family in ("gemma", "gemma2", "gemma3_text", "qwen3") else {}
    return cls(**common, **extra)


def save_tiny(family: str, root: Path, n_layers: int = 3) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    tok = make_tokenizer()
    model = AutoModelForCausalLM.from_config(make_config(family, len(tok), n_layers))
    # Random init leaves norms at 1 and small weights; scale embeddings so layers do real work.
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20)
    path = root / family
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
