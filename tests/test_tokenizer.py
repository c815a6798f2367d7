"""gnr's CLIP tokenizer against transformers' CLIPTokenizer on the real CLIP vocabulary."""
from __future__ import annotations

import json
import random
import shutil
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clip_vocab import write_clip_tokenizer_files  # noqa: E402

import transformers  # noqa: E402

from gnr.tokenizer import ClipTokenizer, PromptTruncatedWarning  # noqa: E402

# Long prompts are compared with transformers on purpose: their warnings are expected there.
pytestmark = pytest.mark.filterwarnings("ignore::gnr.tokenizer.PromptTruncatedWarning")


# --------------------------------------------------------------------------- prompts

HAND_WRITTEN = [
    # plain
    "a photo of a cat",
    "A photo of a dog sitting on a bench in the park",
    "a cat wearing sunglasses",
    "an oil painting of a lighthouse at dusk, highly detailed, trending on artstation",
    "portrait of a woman, 85mm, f/1.8, bokeh",
    "",
    " ",
    "a",
    "A",
    "cat",
    "CAT",
    "CaT DoG",
    "ALL CAPS PROMPT WITH MANY WORDS",
    # punctuation
    "hello, world!",
    "what?!?! no...",
    "a (very) [detailed] {scene}",
    "((masterpiece)), best quality:1.2",
    "cat|dog|bird",
    "a--b__c..d",
    "#hashtag @mention $100 50% 3*4=12",
    "email@example.com http://example.com/path?q=1&x=2",
    "\"quoted\" 'single' `back`",
    "semi;colon:colon/slash\\backslash",
    "~tilde ^caret <angle> >",
    "<|startoftext|>",
    "<|endoftext|>",
    "a <|endoftext|> b",
    "<|startoftext|>a photo<|endoftext|>",
    "<|STARTOFTEXT|> upper special",
    "< |endoftext| >",
    "<|endoftext",
    "!!!!!!!!!!!!!!!!!!!!",
    "...",
    "-",
    # digits
    "1234567890",
    "3 cats and 12 dogs",
    "the year 1999",
    "3.14159 and 2,718",
    "4k 8k uhd 1080p",
    "v1.5 sd-1.4",
    "½ ¾ ² ³ ¹",
    "①②③ ⅷ",
    "٣ ٤ ٥ arabic-indic digits",
    "१२३ devanagari digits",
    "１２３ fullwidth digits",
    # apostrophes and contractions
    "it's a cat",
    "don't stop",
    "we're here",
    "they've gone",
    "I'm happy",
    "you'll see",
    "he'd know",
    "IT'S LOUD",
    "DON'T",
    "o'clock rock'n'roll",
    "the cat's toy",
    "cats' toys",
    "'s 't 're 've 'm 'll 'd",
    "it’s a curly apostrophe",
    "''double'' '''triple'''",
    "'",
    # accents (NFC)
    "café",
    "crème brûlée",
    "naïve façade",
    "Ångström",
    "São Paulo",
    "Zürich Straße",
    "ÉCOLE ÉLÉMENTAIRE",
    "İstanbul",
    "ﬁne ligature",
    "Œuvre æsthetic",
    "Dvořák Łódź",
    "Ελληνικά γράμματα",
    "ΣΊΣΥΦΟΣ",
    # non-Latin scripts
    "一只猫坐在桌子上",
    "東京タワーの夜景",
    "ひらがな カタカナ",
    "한국어 문장입니다",
    "кошка сидит на столе",
    "ПРИВЕТ МИР",
    "Ёлка и ёжик",
    "قطة تجلس على الطاولة",
    "مرحبا بالعالم",
    "बिल्ली मेज पर बैठी है",
    "नमस्ते दुनिया",
    "שלום עולם",
    "ภาษาไทย",
    "ქართული",
    "a cat 猫 кошка قطة बिल्ली",
    "mixed中文english",
    "ǅ ǆ titlecase",
    # emoji
    "a cat 🐱",
    "🐱🐶🐭",
    "🔥🔥🔥 fire",
    "👍🏽 thumbs up with skin tone",
    "👨‍👩‍👧‍👦 family",
    "🏳️‍🌈 flag",
    "👩‍💻 technologist",
    "❤️ heart with selector",
    "🇫🇷🇯🇵 flags",
    "emoji😀inside😀words",
    "✨sparkles✨",
    "1️⃣ keycap",
    # odd whitespace
    "\ta cat",
    "a cat\t",
    "a\tcat",
    "a\ncat",
    "a\r\ncat",
    "\n\n\n",
    "  leading spaces",
    "trailing spaces   ",
    "   both   ",
    "a\u00a0cat non-breaking",
    "a\u3000cat ideographic",
    "a\u2009thin\u200aspaces",
    "a\u2028line\u2029para",
    "a\u200bzero\u200bwidth",
    "a\u200dzwj",
    "a\ufeffbom",
    "a\x0bvertical\x0ctab",
    "a\x85next line",
    "many     spaces     between",
    "\t \n \u00a0 \u3000",
    # control and unusual
    "a\x00nul",
    "a\x1bescape",
    "\u0301 leading combining mark",
    "e\u0301\u0302 stacked",
    "Ⅻ roman numeral",
    "ß ẞ sharp s",
    "ﬃ ﬄ",
    "\U0001d400\U0001d401 math bold",
    "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    "\ud7ff\ue000 private use",
    "Ａｂｃ fullwidth latin",
]

# Accents in decomposed (NFD) form: NFC must recompose them.
NFD = [
    unicodedata.normalize("NFD", s)
    for s in [
        "café",
        "crème brûlée",
        "naïve façade",
        "Ångström",
        "São Paulo",
        "ÉCOLE ÉLÉMENTAIRE",
        "Dvořák",
        "Ελληνικά",
        "Ёлка",
        "한국어",
        "ひらがな ガギグ",
        "résumé of a café in Zürich",
    ]
]

LONG = [
    "a " * 100,
    "cat " * 76,
    "cat " * 75,
    "cat " * 74,
    "cat " * 73,
    "! " * 200,
    "supercalifragilisticexpialidocious " * 20,
    ", ".join(["a beautiful landscape with mountains and a river"] * 6),
    "🐱" * 80,
    "猫" * 100,
    "1" * 100,
    ("masterpiece, best quality, ultra detailed, 8k, photorealistic, " * 8).strip(),
]


def _random_prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pools = [
        "abcdefghijklmnopqrstuvwxyz" * 3,
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "0123456789",
        ".,;:!?'\"()[]{}<>|/\\-_+=*&^%$#@~`",
        "'s 't 're 've 'm 'll 'd ",
        "éèêëàâäôöûüçñÉÀÇÑåøæœßıİ",
        "\u0301\u0300\u0308\u0327\u030a",  # combining marks
        "猫犬鳥山川日本語中文字",
        "кошкасобакаПРИВЕТёЁ",
        "قطةمرحبابالعالم",
        "बिल्लीनमस्तेदुनिया",
        "🐱🐶🔥✨😀👍🏽\u200d❤️🇫🇷",
        " \t\n\u00a0\u3000\u2009 ",
        "<|endoftext|><|startoftext|>",
    ]
    out = []
    for _ in range(n):
        k = rng.randint(0, 120)
        chars = []
        for _ in range(k):
            pool = rng.choice(pools)
            chars.append(rng.choice(pool))
        out.append("".join(chars))
    return out


RANDOM = _random_prompts(90, seed=20240917)

PROMPTS = HAND_WRITTEN + NFD + LONG + RANDOM


def test_prompt_count():
    assert len(PROMPTS) >= 200
    assert len(set(PROMPTS)) == len(PROMPTS)


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def vocab_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clip_tokenizer")
    write_clip_tokenizer_files(folder)
    return folder


@pytest.fixture(scope="module")
def reference(vocab_folder):
    return transformers.CLIPTokenizer.from_pretrained(str(vocab_folder))


@pytest.fixture(scope="module")
def ours(vocab_folder):
    return ClipTokenizer(vocab_folder)


def _ref_ids(ref, text, length=77):
    return ref(text, padding="max_length", max_length=length, truncation=True).input_ids


# --------------------------------------------------------------------------- parity


@pytest.mark.parametrize("i", range(len(PROMPTS)))
def test_matches_transformers(ours, reference, i):
    text = PROMPTS[i]
    got = ours.encode(text)
    want = _ref_ids(reference, text)
    assert got.dtype == np.int32 and got.shape == (77,)
    assert got.tolist() == want, f"prompt {text!r}"


def test_vocabulary_is_clip(ours, reference):
    assert (ours.start_id, ours.end_id, ours.vocab_size) == (49406, 49407, 49408)
    assert ours.encode("a photo of a cat").tolist()[:7] == [49406, 320, 1125, 539, 320, 2368, 49407]


def test_long_prompt_truncated_to_75_tokens(ours):
    with pytest.warns(PromptTruncatedWarning, match="100 tokens"):
        ids = ours.encode("cat " * 100)
    assert ids[0] == 49406 and ids[-1] == 49407
    assert (ids[1:76] == ids[1]).all() and ids[1] != 49407
    assert len(ours.tokenize("cat " * 100)) == 100


def test_truncation_warning_names_the_dropped_part(vocab_folder):
    """As transformers and diffusers do: the warning quotes what was cut at
    77 tokens, verbatim from the prompt (offsets survive accents, case and
    runs of spaces before the cut)."""
    tok = ClipTokenizer(vocab_folder)
    head = "Crème  brûlée,   "
    kept = head + "cat " * (75 - len(tok.tokenize(head)))
    assert len(tok.tokenize(kept)) == 75
    with pytest.warns(PromptTruncatedWarning) as record:
        ids = tok.encode(kept + "Zebra   GIRAFFE!")
    assert len(record) == 1
    message = str(record[0].message)
    assert message.endswith("has no effect: 'Zebra   GIRAFFE!'") and "78 tokens" in message
    assert ids.tolist() == tok.encode(kept).tolist()


def test_truncation_warning_once_per_prompt(vocab_folder):
    import warnings

    tok = ClipTokenizer(vocab_folder)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        tok.encode("cat " * 75)                          # exactly 75 tokens: nothing cut
        assert record == []
        for _ in range(3):
            tok.encode("cat " * 75 + "dog")
        tok.encode("cat " * 75 + "bird")
    assert [str(w.message).rsplit(": ", 1)[1] for w in record] == ["'dog'", "'bird'"]
    assert all(w.category is PromptTruncatedWarning and w.filename == __file__ for w in record)


def test_nfd_and_nfc_agree(ours):
    s = "crème brûlée in a café"
    nfd = unicodedata.normalize("NFD", s)
    assert nfd != s
    assert ours.encode(nfd).tolist() == ours.encode(s).tolist()


@pytest.mark.parametrize("length", [2, 3, 16, 100])
def test_other_lengths(vocab_folder, reference, length):
    tok = ClipTokenizer(vocab_folder, length=length)
    for text in ["", "a photo of a cat", "cat " * 120, "crème brûlée 🐱"]:
        got = tok.encode(text)
        assert got.shape == (length,)
        assert got.tolist() == _ref_ids(reference, text, length), (length, text)


def test_tokenizer_json_folder(reference, tmp_path):
    """A folder with only tokenizer.json (as transformers saves it) gives the same ids."""
    saved = tmp_path / "saved"
    reference.save_pretrained(str(saved))
    only_json = tmp_path / "only_json"
    only_json.mkdir()
    shutil.copy(saved / "tokenizer.json", only_json / "tokenizer.json")
    tok = ClipTokenizer(only_json)
    for text in PROMPTS[::7]:
        assert tok.encode(text).tolist() == _ref_ids(reference, text), text


# --------------------------------------------------------------------------- errors


def test_missing_folder(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        ClipTokenizer(missing)


@pytest.mark.parametrize("name", ["vocab.json", "merges.txt"])
def test_missing_file(vocab_folder, tmp_path, name):
    folder = tmp_path / "tok"
    shutil.copytree(vocab_folder, folder)
    (folder / name).unlink()
    with pytest.raises(FileNotFoundError) as e:
        ClipTokenizer(folder)
    assert str(folder / name) in str(e.value)


def test_invalid_vocab_json(tmp_path):
    (tmp_path / "vocab.json").write_text("{not json")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n")
    with pytest.raises(ValueError, match="vocab.json"):
        ClipTokenizer(tmp_path)


def test_vocab_without_special_tokens(tmp_path):
    (tmp_path / "vocab.json").write_text(json.dumps({"a": 0, "b": 1}))
    (tmp_path / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(ValueError, match="startoftext"):
        ClipTokenizer(tmp_path)


def test_bad_merges_line(vocab_folder, tmp_path):
    folder = tmp_path / "tok"
    shutil.copytree(vocab_folder, folder)
    (folder / "merges.txt").write_text("#version: 0.2\na b c\n")
    with pytest.raises(ValueError, match="merges.txt"):
        ClipTokenizer(folder)


@pytest.mark.parametrize("bad", [None, b"a photo", 5, ["a photo"], 3.0])
def test_non_str_prompt(ours, bad):
    with pytest.raises(TypeError, match="str"):
        ours.encode(bad)


@pytest.mark.parametrize("length, exc", [(1, ValueError), (0, ValueError), (-5, ValueError), (77.0, TypeError), ("77", TypeError)])
def test_bad_length(vocab_folder, length, exc):
    with pytest.raises(exc, match="length"):
        ClipTokenizer(vocab_folder, length=length)
