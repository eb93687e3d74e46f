"""Tokenizers of the real vocabulary sizes, built in process (no tokenizer file is downloaded or shipped).

The token *ids* of a random-weight model mean nothing, so what matters is that the tokenizers have the real
vocabulary sizes, special tokens and context lengths: then every embedding table, every sequence length and
every id the pipelines produce is the real model's. The vocabularies are synthetic but deterministic:

- CLIP (49,408): the 512 byte-level symbols (with and without the end-of-word mark), merges of lowercase
  letters and digits in a fixed order until 49,406 entries, then ``<|startoftext|>`` / ``<|endoftext|>``.
- T5 (32,000 pieces + 100 sentinels) and UMT5 (256,000 + 300): ``<pad>``, ``</s>``, ``<unk>``, the word
  boundary, printable ASCII, then ``▁`` + letter strings in a fixed order, up to the size.
"""

from __future__ import annotations

import itertools
import string
from typing import Any, Iterator

from opgrpo_bench.backbones.tiny import _bytes_to_unicode

CLIP_VOCAB = 49408
T5_PIECES, T5_EXTRA = 32000, 100
UMT5_PIECES, UMT5_EXTRA = 256000, 300

_ALNUM = string.ascii_lowercase + string.digits


def _strings(alphabet: str) -> Iterator[str]:
    """Every string over ``alphabet`` by length, then lexicographically: a, b, ..., aa, ab, ..."""
    for n in itertools.count(1):
        for chars in itertools.product(alphabet, repeat=n):
            yield "".join(chars)


def build_clip_tokenizer(max_length: int = 77, vocab_size: int = CLIP_VOCAB) -> Any:
    """A byte-level BPE CLIP tokenizer with exactly ``vocab_size`` entries (the last two: start/end of text)."""
    from transformers import CLIPTokenizer

    alphabet = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for c in alphabet + [c + "</w>" for c in alphabet]:
        vocab.setdefault(c, len(vocab))
    merges: list[tuple[str, str]] = []
    target = vocab_size - 2
    # merges (prefix, next char) and (prefix, next char + </w>) over growing alphanumeric prefixes: both
    # parts of a merge always exist before it
    for prefix in _strings(_ALNUM):
        for c in _ALNUM:
            for right, merged in ((c, prefix + c), (c + "</w>", prefix + c + "</w>")):
                if len(vocab) >= target:
                    break
                if merged not in vocab:
                    merges.append((prefix, right))
                    vocab[merged] = len(vocab)
        if len(vocab) >= target:
            break
    for special in ("<|startoftext|>", "<|endoftext|>"):
        vocab.setdefault(special, len(vocab))
    assert len(vocab) == vocab_size, len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_length)


def build_t5_tokenizer(max_length: int = 512, pieces: int = T5_PIECES, extra_ids: int = T5_EXTRA) -> Any:
    """A unigram T5 tokenizer with ``pieces`` pieces plus ``extra_ids`` sentinels (T5: 32,000 + 100;
    UMT5: 256,000 + 300). Ids 0, 1, 2 are ``<pad>``, ``</s>``, ``<unk>`` as in T5."""
    from transformers import T5Tokenizer

    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    seen = {p for p, _ in vocab}
    for c in (chr(i) for i in range(33, 127)):
        if c not in seen:
            vocab.append((c, -6.0))
            seen.add(c)
    for word in _strings(string.ascii_lowercase):
        if len(vocab) >= pieces:
            break
        # longer pieces score higher, so that whole words win over their letters
        vocab.append(("▁" + word, -5.0 + 0.5 * min(len(word), 8)))
    return T5Tokenizer(vocab=vocab, extra_ids=extra_ids, model_max_length=max_length)


def build_tokenizer(kind: str, max_length: int) -> Any:
    """``clip`` / ``clip-g`` (the same vocabulary), ``t5`` or ``umt5``."""
    if kind in ("clip", "clip-g"):
        return build_clip_tokenizer(max_length)
    if kind == "t5":
        return build_t5_tokenizer(max_length, T5_PIECES, T5_EXTRA)
    if kind == "umt5":
        return build_t5_tokenizer(max_length, UMT5_PIECES, UMT5_EXTRA)
    raise KeyError(kind)
