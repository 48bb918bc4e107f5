"""A random-weight GGUF model for smoke tests, demos and benchmarks.

It is a real llama-architecture file that llama.cpp loads and runs at full speed, but its
weights are random: it answers with nonsense. Its vocabulary is a few hundred printable
word pieces, four special tokens and the 256 byte-fallback tokens (so any input
tokenizes). Dimension 0 of the residual stream is held constant (the embeddings set it
and no layer writes to it), which lets the output layer give every special and byte
token a logit far below the rest: generated text is always printable.
"""

from __future__ import annotations

import itertools
import os
import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEMO_MODEL_NAME = "xb-demo"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

_SPECIALS = ["<unk>", "<s>", "<|im_start|>", "<|im_end|>"]
_UNK, _BOS, _IM_START, _EOS = range(4)
_SPACE = "\u2581"  # SentencePiece's word-start marker; llama.cpp decodes it as a space

_TOKEN_NORMAL, _TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_BYTE = 1, 2, 3, 6


@dataclass(frozen=True)
class DemoModelConfig:
    n_embd: int = 64
    n_layer: int = 2
    n_head: int = 4
    n_ff: int = 128
    n_words: int = 400
    context_length: int = 4096
    eos_logit: float = 2.0  # tuned: answers average ~90 tokens at these sizes
    seed: int = 0
    f16: bool = False
    # What the layers after the first add to the residual stream, scaled: a model written
    # with a small scale and the same seed agrees often with its own first layer alone
    # (written with n_layer 1), which can draft for it.
    late_layer_scale: float = 1.0
    logit_scale: float = 3.0  # larger: the model is surer of its choices


def _word_pieces(count: int) -> list[str]:
    """Printable, distinct pieces: characters, then syllables with and without a space."""
    chars = string.ascii_letters + string.digits + string.punctuation
    pieces = list(chars) + [_SPACE + c for c in chars]
    consonants, vowels = "bcdfghklmnprstvz", "aeiou"
    for c, v in itertools.product(consonants, vowels):
        pieces += [_SPACE + c + v, c + v] + [_SPACE + c + v + end for end in "nrst"]
    if count > len(pieces):
        raise ValueError(f"at most {len(pieces)} word pieces are available, asked for {count}")
    return pieces[:count]


def vocabulary(n_words: int) -> tuple[list[str], list[float], list[int]]:
    """The tokens, their scores and their types; a token's id is its index."""
    tokens = list(_SPECIALS)
    types = [_TOKEN_UNKNOWN, _TOKEN_CONTROL, _TOKEN_CONTROL, _TOKEN_CONTROL]
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [_TOKEN_BYTE] * 256
    words = _word_pieces(n_words)
    tokens += words
    types += [_TOKEN_NORMAL] * len(words)
    # SentencePiece merges the highest-scoring pieces first: prefer longer ones.
    scores = [0.0] * (4 + 256) + [len(w) - i * 1e-4 for i, w in enumerate(words)]
    return tokens, scores, types


def write_demo_model(path: Path, config: DemoModelConfig = DemoModelConfig()) -> Path:
    """Write the model to ``path`` (atomically) and return ``path``."""
    import gguf

    tokens, scores, types = vocabulary(config.n_words)
    n_vocab, d, ff = len(tokens), config.n_embd, config.n_ff
    rng = np.random.default_rng(config.seed)
    big = np.float16 if config.f16 else np.float32

    def matrix(rows: int, cols: int) -> np.ndarray[Any, np.dtype[np.float32]]:
        scale = np.float32(1.0 / np.sqrt(cols))
        return rng.standard_normal((rows, cols), dtype=np.float32) * scale

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")  # concurrent writers do not collide
    writer = gguf.GGUFWriter(str(tmp), "llama")
    writer.add_name("xb demo (random weights, answers with nonsense)")
    writer.add_context_length(config.context_length)
    writer.add_embedding_length(d)
    writer.add_block_count(config.n_layer)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(config.n_head)
    writer.add_head_count_kv(config.n_head)
    writer.add_rope_dimension_count(d // config.n_head)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(1 if config.f16 else 0)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(_BOS)
    writer.add_eos_token_id(_EOS)
    writer.add_unk_token_id(_UNK)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(CHAT_TEMPLATE)

    embeddings = rng.standard_normal((n_vocab, d)).astype(np.float32)
    embeddings[:, 0] = 4.0
    writer.add_tensor("token_embd.weight", embeddings.astype(big))
    writer.add_tensor("output_norm.weight", np.ones(d, dtype=np.float32))
    output = matrix(n_vocab, d) * np.float32(config.logit_scale)
    output[:, 0] = 0.0
    output[: 4 + 256, 0] = -1000.0  # specials and bytes: never sampled
    output[_EOS, :] = 0.0
    output[_EOS, 0] = config.eos_logit
    writer.add_tensor("output.weight", output.astype(big))
    for layer in range(config.n_layer):
        attn_out, ffn_down = matrix(d, d), matrix(d, ff)
        attn_out[0, :] = 0.0  # nothing writes to the constant dimension
        ffn_down[0, :] = 0.0
        if layer:
            attn_out *= np.float32(config.late_layer_scale)
            ffn_down *= np.float32(config.late_layer_scale)
        blk = f"blk.{layer}."
        writer.add_tensor(blk + "attn_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(blk + "attn_q.weight", matrix(d, d).astype(big))
        writer.add_tensor(blk + "attn_k.weight", matrix(d, d).astype(big))
        writer.add_tensor(blk + "attn_v.weight", matrix(d, d).astype(big))
        writer.add_tensor(blk + "attn_output.weight", attn_out.astype(big))
        writer.add_tensor(blk + "ffn_norm.weight", np.ones(d, dtype=np.float32))
        writer.add_tensor(blk + "ffn_gate.weight", matrix(ff, d).astype(big))
        writer.add_tensor(blk + "ffn_up.weight", matrix(ff, d).astype(big))
        writer.add_tensor(blk + "ffn_down.weight", ffn_down.astype(big))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    tmp.replace(path)
    return path


def ensure_demo_model(home: Path) -> Path:
    """The built-in demo model under ``home``, written the first time it is needed."""
    path = home / "models" / f"{DEMO_MODEL_NAME}.gguf"
    if not path.exists():
        # eos_logit tuned by measurement: answers of about 90 tokens on average.
        write_demo_model(path, DemoModelConfig(n_embd=128, n_layer=4, n_ff=256, eos_logit=2.8))
    return path
