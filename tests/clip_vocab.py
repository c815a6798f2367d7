"""Tokenizer files derived from the real CLIP BPE vocabulary (test helper).

The `clip-anytorch` wheel ships OpenAI's `bpe_simple_vocab_16e6.txt.gz`. This
module turns it into the `vocab.json` + `merges.txt` pair that Stable Diffusion
model folders carry, exactly as CLIP's `SimpleTokenizer` builds its vocabulary:
the 256 byte characters, the same with `</w>`, one token per merge, then the two
special tokens (ids 49406 and 49407). The package is located without importing
it (its `__init__` needs torch and pkg_resources).
"""
from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

START = "<|startoftext|>"
END = "<|endoftext|>"
N_MERGES = 49152 - 256 - 2  # CLIP keeps the first 48894 merges of the file


def clip_bpe_path() -> Path:
    """Path of `bpe_simple_vocab_16e6.txt.gz` inside the installed `clip` package."""
    spec = importlib.util.find_spec("clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the CLIP vocabulary comes from the clip-anytorch wheel: pip install --no-deps clip-anytorch"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the clip-anytorch install")
    return path


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte -> printable character table (printable Latin-1 bytes map
    to themselves, the other 68 bytes to U+0100 onwards, in byte order)."""
    bs = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token -> id table (49408 entries) and its merge list, in rank order."""
    with gzip.open(clip_bpe_path(), "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [c + "</w>" for c in byte_chars] + ["".join(m) for m in merges] + [START, END]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("duplicate tokens in the CLIP vocabulary")
    return vocab, merges


def write_clip_tokenizer_files(folder) -> None:
    """Write vocab.json, merges.txt, special_tokens_map.json and tokenizer_config.json
    into `folder` (created if needed), loadable by `transformers.CLIPTokenizer.from_pretrained`."""
    folder = Path(folder)
    vocab, merges = clip_vocab_and_merges()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    specials = {"bos_token": START, "eos_token": END, "pad_token": END, "unk_token": END}
    (folder / "special_tokens_map.json").write_text(json.dumps(specials), encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(
        json.dumps({"model_max_length": 77, "do_lower_case": True, "tokenizer_class": "CLIPTokenizer", **specials}),
        encoding="utf-8",
    )
