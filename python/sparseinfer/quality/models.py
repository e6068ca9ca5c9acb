"""The small models the quality runs train: an MLP and a CNN for 8x8 digits, and a character-level
Llama (Hugging Face transformers, built from a config: no download)."""
from __future__ import annotations

from torch import nn


def digits_mlp(hidden: int = 512) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, 10))


def digits_cnn(channels: int = 32, hidden: int = 256) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
        nn.Conv2d(channels, 2 * channels, 3, padding=1), nn.BatchNorm2d(2 * channels), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(2 * channels * 16, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def char_llama(vocab_size: int, hidden: int = 128, layers: int = 4, heads: int = 4, context: int = 128):
    """A LlamaForCausalLM with `layers` decoder blocks of width `hidden` (MLP 3x), untied head."""
    try:
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError as error:
        raise ImportError("the character LM needs transformers: pip install 'sparseinfer[quality]'") from error
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=3 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
                         max_position_embeddings=context, tie_word_embeddings=False)
    return LlamaForCausalLM(config)
