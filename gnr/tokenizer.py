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

`encode` wraps the first `length - 2` tokens in start/end and pads with the
folder's pad token to `length` (77 for SD: the text encoder's
max_position_embeddings, never the config's model_max_length). The pad token
is the end token for SD 1.x and "!" (id 0) for SD 2.x; it is read as
transformers reads it (`pad_token` of tokenizer_config.json, overridden by
special_tokens_map.json unless tokenizer_config.json lists
`added_tokens_decoder`; CLIPTokenizer's default, the end token, when neither
names one). No attention mask: SD 1.x and 2.x use none.
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

__all__ = ["ClipTokenizer", "PromptTruncatedWarning", "read_pad_token", "START_TOKEN", "END_TOKEN",
           "CLIP_SPLIT_PATTERN"]

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


def _token_content(value):
    """A special token as tokenizer configs write it: a string, or an
    AddedToken dict whose "content" is the string."""
    if isinstance(value, dict):
        return value.get("content")
    return value


def read_pad_token(folder: Path) -> tuple[str, Path | None]:
    """(pad token, the file that names it, or None for the default) of a
    tokenizer folder, resolved as transformers' CLIPTokenizer.from_pretrained
    resolves it."""
    config_path, map_path = folder / "tokenizer_config.json", folder / "special_tokens_map.json"
    config = _load_json(config_path) if config_path.is_file() else {}
    if not isinstance(config, dict):
        raise ValueError(f"{config_path}: must be a JSON object")
    pad, where = _token_content(config.get("pad_token")), config_path
    # A config without added_tokens_decoder is a legacy save: transformers then
    # merges special_tokens_map.json over it.
    if "added_tokens_decoder" not in config and map_path.is_file():
        specials = _load_json(map_path)
        if not isinstance(specials, dict):
            raise ValueError(f"{map_path}: must be a JSON object")
        if specials.get("pad_token") is not None:
            pad, where = _token_content(specials["pad_token"]), map_path
    if pad is None:
        return END_TOKEN, None
    if not isinstance(pad, str):
        raise ValueError(f"{where}: pad_token = {pad!r} must be a token (a string)")
    return pad, where


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
    start id, the first length-2 token ids, end id, then `pad_id` (the folder's pad
    token: the end token for SD 1.x, "!" = 0 for SD 2.x) as padding. `pad_token`,
    when given, replaces the folder's (a single-file checkpoint's family pads
    gnr's bundled vocabulary this way)."""

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
        pad, pad_source = read_pad_token(folder) if pad_token is None else (pad_token, "pad_token argument")
        if pad not in vocab:
            raise ValueError(f"{pad_source}: pad_token {pad!r} is not in the vocabulary of {source} (supported: a "
                             f"token of the vocabulary, such as {END_TOKEN!r} for SD 1.x or '!' for SD 2.x)")
        self.pad_token = pad
        self.pad_id = int(vocab[pad])
        self.vocab_size = len(vocab)
        self._tok = self._build(vocab, merges, source, pad)
        self._warned: set[str] = set()

    @staticmethod
    def _build(vocab, merges, source, pad: str = END_TOKEN) -> Tokenizer:
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
        # pad token is one too: SD 2.x's "!" is then always a token of its
        # own ("4k!!" ends in two of them), as in transformers.
        specials = dict.fromkeys((START_TOKEN, END_TOKEN, pad))
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
        `pad_id`. Tokens past those are dropped with a PromptTruncatedWarning naming them."""
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
        return f"ClipTokenizer({str(self.folder)!r}, length={self.length})"
