"""CLIP tokenizer for Stable Diffusion 1.x and 2.x prompts.

Gives exactly the ids of transformers' `CLIPTokenizer` (the test oracle), built
with the `tokenizers` library from the model folder's `tokenizer/vocab.json` +
`merges.txt` (or the vocabulary and merges inside `tokenizer.json`, which is
what transformers itself does for CLIP). The pipeline:

  1. the special tokens `<|startoftext|>`, `<|endoftext|>` and the pad token
     are matched in the raw text first (as transformers does: special, not
     normalised);
  2. normalise: Unicode NFC, every whitespace run -> one space, lower case;
  3. split with CLIP's regex (special tokens, contractions, letter runs,
     single digits, runs of other non-space characters; whitespace dropped),
     then map bytes to GPT-2's printable byte characters;
  4. byte-level BPE with the end-of-word suffix `</w>`.

`encode` wraps the first `length - 2` tokens in start/end and pads to
`length` (77 for SD: the text encoder's max_position_embeddings, never the
config's model_max_length) with the pad token: the end token for SD 1.x,
"!" for SD 2.x's OpenCLIP (`pad_token`). No attention mask: SD uses none.
A longer prompt is cut there, as transformers and diffusers cut it, with a
`PromptTruncatedWarning` (once per prompt and tokenizer) that quotes the part
of the prompt that was dropped.
"""
from __future__ import annotations

import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import BPE

__all__ = ["ClipTokenizer", "PromptTruncatedWarning", "START_TOKEN", "END_TOKEN", "CLIP_SPLIT_PATTERN"]

START_TOKEN = "<|startoftext|>"
END_TOKEN = "<|endoftext|>"
CLIP_SPLIT_PATTERN = (
    r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
)


def _read_vocab_merges(folder: Path) -> tuple[dict[str, int], list[tuple[str, str]], Path]:
    """Vocabulary and merges from tokenizer.json if present, else vocab.json + merges.txt."""
    tj = folder / "tokenizer.json"
    if tj.is_file():
        return (*_from_tokenizer_json(tj), tj)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    for p in (vocab_path, merges_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: no such file (a CLIP tokenizer needs vocab.json and merges.txt, or tokenizer.json)")
    vocab = _load_json(vocab_path)
    _check_vocab(vocab, vocab_path)
    try:
        lines = merges_path.read_text(encoding="utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise ValueError(f"{merges_path}: not valid UTF-8 ({e})") from None
    merges = []
    for i, line in enumerate(lines):
        if (i == 0 and line.startswith("#version")) or not line.strip():
            continue
        parts = line.split()  # as tokenizers' BPE.read_file: two symbols separated by a space
        if len(parts) != 2:
            raise ValueError(f"{merges_path}: line {i + 1} must hold two symbols separated by a space, found {line!r}")
        merges.append((parts[0], parts[1]))
    return vocab, merges, vocab_path


def _load_json(path: Path):
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def _check_vocab(vocab, path: Path) -> None:
    if not isinstance(vocab, dict) or not vocab:
        raise ValueError(f"{path}: the vocabulary must be a non-empty JSON object (token -> id)")
    for token, i in vocab.items():
        if not isinstance(i, int) or isinstance(i, bool) or i < 0:
            raise ValueError(f"{path}: token {token!r} has id {i!r}; ids must be non-negative integers")


def _from_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    data = _load_json(path)
    model = data.get("model") if isinstance(data, dict) else None
    if not isinstance(model, dict) or model.get("type", "BPE") != "BPE":
        raise ValueError(f"{path}: expected a BPE model (a CLIP tokenizer), found {model and model.get('type')!r}")
    vocab = model.get("vocab")
    _check_vocab(vocab, path)
    merges = []
    for m in model.get("merges") or []:
        pair = tuple(m.split(" ")) if isinstance(m, str) else tuple(m)
        if len(pair) != 2 or not all(isinstance(x, str) for x in pair):
            raise ValueError(f"{path}: merge {m!r} must be two symbols")
        merges.append(pair)
    return vocab, merges


class PromptTruncatedWarning(UserWarning):
    """A prompt had more tokens than the text encoder reads; the rest was cut."""


def _caller_stacklevel() -> int:
    """The stacklevel of the first frame outside the gnr package (the user's
    call), for warnings.warn called from the frame above this one."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame, level = sys._getframe(1), 1
    while frame is not None and os.path.abspath(frame.f_code.co_filename).startswith(package + os.sep):
        frame, level = frame.f_back, level + 1
    return level


class ClipTokenizer:
    """CLIP BPE tokenizer reading a diffusers `tokenizer/` folder.

    `ClipTokenizer(folder, length=77).encode(text)` -> int32 array of shape (length,):
    start id, the first length-2 token ids, end id, then `pad_token` ids as
    padding: the end token by default (SD 1.x), "!" for SD 2.x's OpenCLIP."""

    def __init__(self, folder, length: int = 77, pad_token: str | None = None):
        if not isinstance(length, int) or isinstance(length, bool):
            raise TypeError(f"length must be an int, got {type(length).__name__}")
        if length < 2:
            raise ValueError(f"length must be >= 2 (room for the start and end tokens), got {length}")
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such tokenizer folder")
        vocab, merges, source = _read_vocab_merges(folder)
        for token in (START_TOKEN, END_TOKEN):
            if token not in vocab:
                raise ValueError(f"{source}: the vocabulary has no {token!r} token (not a CLIP vocabulary)")
        self.folder = folder
        self.length = length
        self.start_id = int(vocab[START_TOKEN])
        self.end_id = int(vocab[END_TOKEN])
        if pad_token is None:
            pad_token = END_TOKEN
        if not isinstance(pad_token, str) or pad_token not in vocab:
            raise ValueError(f"{source}: pad_token {pad_token!r} is not in the vocabulary (allowed: None for "
                             f"{END_TOKEN!r}, or a token of the vocabulary, e.g. '!' for SD 2.x)")
        self.pad_token = pad_token
        self.pad_id = int(vocab[pad_token])
        self.vocab_size = len(vocab)
        self._tok = self._build(vocab, merges, source, pad_token)
        self._warned: set[str] = set()

    @staticmethod
    def _build(vocab, merges, source, pad_token: str) -> Tokenizer:
        # The same pipeline transformers' CLIPTokenizer builds (tokenization_clip.py).
        try:
            tok = Tokenizer(
                BPE(
                    vocab=vocab,
                    merges=merges,
                    dropout=None,
                    continuing_subword_prefix="",
                    end_of_word_suffix="</w>",
                    fuse_unk=False,
                    unk_token=END_TOKEN,
                )
            )
        except Exception as e:  # tokenizers reports inconsistent vocab/merges as a generic Exception
            raise ValueError(f"{source}: cannot build the BPE model ({e})") from None
        tok.normalizer = normalizers.Sequence(
            [normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()]
        )
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(CLIP_SPLIT_PATTERN), behavior="removed", invert=True),
                pre_tokenizers.ByteLevel(add_prefix_space=False),
            ]
        )
        # Special tokens are matched in the raw text before normalisation. The
        # pad token is one too, as in transformers: with SD 2.x's "!", each "!"
        # of a prompt is that token rather than part of a BPE word.
        specials = dict.fromkeys((START_TOKEN, END_TOKEN, pad_token))
        tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
        return tok

    def _encoding(self, text: str):
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        return self._tok.encode(text, add_special_tokens=False)

    def tokenize(self, text: str) -> list[int]:
        """All token ids of `text`, without start/end, untruncated."""
        return self._encoding(text).ids

    def encode(self, text: str) -> np.ndarray:
        """`text` -> int32 array (length,): [start] + first length-2 tokens + [end], padded with
        the pad token. Tokens past those are dropped with a PromptTruncatedWarning naming them."""
        enc = self._encoding(text)
        keep = self.length - 2
        ids = enc.ids[:keep]
        if len(enc.ids) > keep and text not in self._warned:
            self._warned.add(text)
            dropped = text[enc.offsets[keep][0]:]  # the offsets point into the prompt as given
            warnings.warn(f"this prompt has {len(enc.ids)} tokens and the text encoder reads {keep} (plus start and "
                          f"end: {self.length}); the part cut off has no effect: {dropped!r}",
                          PromptTruncatedWarning, stacklevel=_caller_stacklevel())
        out = np.full(self.length, self.pad_id, dtype=np.int32)
        out[0] = self.start_id
        out[1 : 1 + len(ids)] = ids
        out[1 + len(ids)] = self.end_id
        return out

    def __repr__(self) -> str:
        pad = "" if self.pad_token == END_TOKEN else f", pad_token={self.pad_token!r}"
        return f"ClipTokenizer({str(self.folder)!r}, length={self.length}{pad})"
