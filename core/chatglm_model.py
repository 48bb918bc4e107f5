"""A tiny random-weight ChatGLM2 model file for chatglm.cpp, for smoke tests and demos.

The file is byte-for-byte in the layout that chatglm.cpp's own converter
(``chatglm_cpp/convert.py``, ``ChatGLM2Converter``, chatglm-cpp 0.4.x) writes with ``-t f16``,
so ``chatglm_cpp.Pipeline(path)`` loads it and chats with it. Its weights are random: it
answers with nonsense. The layout, all integers and floats little-endian 32-bit:

* ``b"ggml"``, the model type (2: ChatGLM2), the config version (2);
* the config record: weight dtype, vocabulary size, hidden size, attention heads,
  multi-query groups, layers, FFN size, norm epsilon (float), prefix tokens, RoPE theta (float),
  sequence length, eos id, pad id;
* the length of the serialized SentencePiece model, then the model itself;
* the tensors, to the end of the file: name length, name, number of dimensions, the dimensions
  outermost first (PyTorch order), ggml type, zero padding to a 16-byte file offset, the data.

The tokenizer is a SentencePiece unigram model of a few hundred pieces trained on generated
pseudo-words. ChatGLM2's five special tokens (``[MASK] [gMASK] [sMASK] sop eop``) are not
pieces of it: chatglm.cpp numbers them after the last piece, so the embedding and output
matrices have ``pieces + 5`` rows.

Three dimensions of the residual stream are reserved: the embeddings set them and no layer
writes to them, so the output layer sees the current token's flags exactly. Dimension 0 is
a constant, which gives special, control and newline tokens a logit far below the rest (the
text is always printable). Dimension 1 marks "sentence-final" words, after which ``.`` is
almost certain; dimension 2 marks ``.``, after which end-of-sequence is almost certain. So
an answer is never empty and ends like a sentence: a few to a few dozen words, then ``.``.
"""

from __future__ import annotations

import io
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

HIDDEN_SIZE = 64
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_GROUPS = 2  # ChatGLM2 is multi-query: K and V are shared by groups of heads
FFN_SIZE = 128
SEQ_LENGTH = 8192  # chatglm_cpp's chat() asks for max_length=2048 by default: stay above it
SP_VOCAB_SIZE = 384

_MODEL_TYPE_CHATGLM2 = 2
_CONFIG_VERSION = 2
_GGML_F32, _GGML_F16 = 0, 1
_ALIGN = 16  # the loader maps each tensor's data at the next 16-byte file offset
_NORM_EPS = 1e-5
_ROPE_THETA = 10000.0
_SPECIAL_TOKENS = ("[MASK]", "[gMASK]", "[sMASK]", "sop", "eop")
_SPACE = "\u2581"  # SentencePiece's word-start marker
_COLON = "\uff1a"  # full-width, as in the prompt template

# Reserved residual dimensions (see the module docstring) and the value the embeddings put in
# them; after the final RMSNorm each reads about 3.3.
_DIM_CONST, _DIM_FINAL_WORD, _DIM_AFTER_STOP = 0, 1, 2
_FLAG = 4.0
_FLAG_LOGIT_WEIGHT = 3.0  # about +-10 in logits, far beyond the random logits' spread
_LOGIT_STD = 2.0  # spread of the random logits: peaked enough to look word-like
_FINAL_WORD_FRACTION = 0.1  # tuned: sampled answers average ~13 words

_TOKENIZER_SEED = 1234  # the tokenizer does not depend on ``seed``: only the weights do

Array = np.ndarray[Any, np.dtype[np.float32]]
Tensor = np.ndarray[Any, np.dtype[np.float32 | np.float16]]


def write_chatglm_model(path: Path, *, seed: int = 0) -> Path:
    """Write the model to ``path`` (atomically) and return ``path``."""
    proto = _train_tokenizer()
    pieces = _pieces(proto)
    config, tensors = _weights(pieces, seed)

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"ggml")
            f.write(struct.pack("<ii", _MODEL_TYPE_CHATGLM2, _CONFIG_VERSION))
            f.write(struct.pack("<iiiiiiififiii", *config))
            f.write(struct.pack("<i", len(proto)))
            f.write(proto)
            for name, array in tensors:
                _write_tensor(f, name, array)
            f.flush()
            os.fsync(f.fileno())
        tmp.chmod(0o644)  # mkstemp makes it private; a model file is not a secret
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _corpus() -> Iterator[str]:
    """Pseudo-words in sentences, plus every character of chatglm.cpp's ChatGLM2 prompt
    (``[Round 1]``, newlines, 问 and 答 with a full-width colon) so that prompts encode
    without unknown pieces."""
    rng = np.random.default_rng(_TOKENIZER_SEED)
    syllables = [c + v for c in "bcdfghklmnprstvz" for v in "aeiou"]
    words = ["".join(rng.choice(syllables, size=rng.integers(1, 4))) for _ in range(1500)]
    for _ in range(4000):
        sentence = " ".join(rng.choice(words, size=rng.integers(3, 12)))
        yield sentence + str(rng.choice([".", ",", "!", "?"]))
    for _ in range(20):
        yield from ("[Round 1]", f"问{_COLON}hi", f"答{_COLON}hello", "0 1 2 3 4 5 6 7 8 9")


def _train_tokenizer() -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=_corpus(),
        model_writer=model,
        vocab_size=SP_VOCAB_SIZE,
        model_type="unigram",
        character_coverage=1.0,
        # identity keeps the colon full-width and spaces as typed: decode(encode(x)) == x
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        # the prompt template has newlines; without a piece for them they encode as <unk>
        user_defined_symbols=["\n"],
        # no byte fallback: a random model would emit byte pieces that are not valid UTF-8,
        # which chatglm.cpp's decoder and the Python binding's str conversion reject
        byte_fallback=False,
        num_threads=1,  # one thread trains the same model every time
        minloglevel=2,
    )
    return model.getvalue()


def _pieces(proto: bytes) -> list[tuple[str, bool]]:
    """Each piece of the SentencePiece model with whether it is ordinary text."""
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=proto)
    return [
        (
            sp.id_to_piece(i),
            not (sp.is_unknown(i) or sp.is_control(i) or sp.is_unused(i) or sp.is_byte(i)),
        )
        for i in range(sp.get_piece_size())
    ]


def _weights(
    pieces: list[tuple[str, bool]], seed: int
) -> tuple[tuple[int | float, ...], list[tuple[str, Tensor]]]:
    rng = np.random.default_rng(seed)
    n_pieces = len(pieces)
    vocab = n_pieces + len(_SPECIAL_TOKENS)
    d, ff = HIDDEN_SIZE, FFN_SIZE
    head = d // NUM_HEADS
    stop_id = next(i for i, (piece, _) in enumerate(pieces) if piece == ".")
    eos_id = next(i for i, (piece, _) in enumerate(pieces) if piece == "</s>")
    pad_id = next(i for i, (piece, _) in enumerate(pieces) if piece == "<unk>")
    reserved = (_DIM_CONST, _DIM_FINAL_WORD, _DIM_AFTER_STOP)

    def matrix(rows: int, cols: int, gain: float = 1.0) -> Array:
        scale = np.float32(gain / np.sqrt(cols))
        return rng.standard_normal((rows, cols), dtype=np.float32) * scale

    def output_projection(rows: int, cols: int) -> Array:
        # small, so that the current token's embedding dominates the residual stream
        weight = matrix(rows, cols, gain=0.5)
        weight[list(reserved), :] = 0.0
        return weight

    word_ids = [
        i
        for i, (piece, text) in enumerate(pieces)
        if text and piece.startswith(_SPACE) and piece[1:].isalpha() and len(piece) > 2
    ]
    n_final = max(1, round(len(word_ids) * _FINAL_WORD_FRACTION))
    final_ids = rng.choice(word_ids, size=n_final, replace=False)

    embeddings = rng.standard_normal((vocab, d), dtype=np.float32)
    embeddings[:, list(reserved)] = 0.0
    embeddings[:, _DIM_CONST] = _FLAG
    embeddings[final_ids, _DIM_FINAL_WORD] = _FLAG
    embeddings[stop_id, _DIM_AFTER_STOP] = _FLAG

    # The final RMSNorm leaves the free dimensions a norm of about sqrt(HIDDEN_SIZE), so the
    # random logits spread about as much as the gain.
    output = matrix(vocab, d, gain=_LOGIT_STD)
    output[:, list(reserved)] = 0.0
    never = [i for i, (piece, text) in enumerate(pieces) if not text or piece in ("\n", _SPACE)]
    never += list(range(n_pieces, vocab))  # the five special tokens
    output[never, :] = 0.0
    output[never, _DIM_CONST] = -_FLAG_LOGIT_WEIGHT
    # "." only right after a sentence-final word, end-of-sequence only right after "."
    output[stop_id, :] = 0.0
    output[stop_id, _DIM_CONST] = -_FLAG_LOGIT_WEIGHT
    output[stop_id, _DIM_FINAL_WORD] = 2 * _FLAG_LOGIT_WEIGHT
    output[eos_id, :] = 0.0
    output[eos_id, _DIM_CONST] = -_FLAG_LOGIT_WEIGHT
    output[eos_id, _DIM_AFTER_STOP] = 2 * _FLAG_LOGIT_WEIGHT

    def f16(array: Array) -> Tensor:
        return array.astype(np.float16)

    ones = np.ones(d, dtype=np.float32)
    qkv_rows = d + 2 * head * NUM_KV_GROUPS
    tensors: list[tuple[str, Tensor]] = [
        ("transformer.embedding.word_embeddings.weight", f16(embeddings))
    ]
    for layer in range(NUM_LAYERS):
        prefix = f"transformer.encoder.layers.{layer}."
        qkv_bias = rng.standard_normal(qkv_rows, dtype=np.float32) * np.float32(0.1)
        tensors += [
            (prefix + "input_layernorm.weight", ones),
            (prefix + "self_attention.query_key_value.weight", f16(matrix(qkv_rows, d))),
            (prefix + "self_attention.query_key_value.bias", qkv_bias),
            (prefix + "self_attention.dense.weight", f16(output_projection(d, d))),
            (prefix + "post_attention_layernorm.weight", ones),
            # gate rows then up rows: the loader splits this tensor in half
            (prefix + "mlp.dense_h_to_4h.weight", f16(matrix(2 * ff, d))),
            (prefix + "mlp.dense_4h_to_h.weight", f16(output_projection(d, ff))),
        ]
    tensors += [
        ("transformer.encoder.final_layernorm.weight", ones),
        ("transformer.output_layer.weight", f16(output)),
    ]

    config = (
        _GGML_F16,
        vocab,
        d,
        NUM_HEADS,
        NUM_KV_GROUPS,
        NUM_LAYERS,
        ff,
        _NORM_EPS,
        0,  # no P-tuning prefix
        _ROPE_THETA,
        SEQ_LENGTH,
        eos_id,  # </s>, as in THUDM/chatglm2-6b's config
        pad_id,
    )
    return config, tensors


def _write_tensor(f: BinaryIO, name: str, array: Tensor) -> None:
    encoded = name.encode()
    ggml_type = _GGML_F16 if array.dtype == np.float16 else _GGML_F32
    f.write(struct.pack("<i", len(encoded)) + encoded)
    f.write(struct.pack(f"<i{array.ndim}ii", array.ndim, *array.shape, ggml_type))
    f.write(b"\0" * (-f.tell() % _ALIGN))
    # the loader reads tensors until the end of the file: nothing may follow the last one
    f.write(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
