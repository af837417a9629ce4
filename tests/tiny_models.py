"""Tiny random Qwen2 models built from a config, for tests (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from distillkit.data.addition import ALPHABET
from distillkit.data.char_tokenizer import build_char_tokenizer


def make_tiny_model(folder: Path, hidden: int = 64, layers: int = 2, seed: int = 0, vocab_pad: int = 0,
                    alphabet: str = ALPHABET + "-") -> Path:
    """Save a random tiny causal LM with the character tokenizer; `vocab_pad` adds unused embedding rows."""
    tokenizer = build_char_tokenizer(alphabet)
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer) + vocab_pad, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=hidden // 32, num_key_value_heads=1, intermediate_size=hidden * 4,
        head_dim=32, max_position_embeddings=64, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
