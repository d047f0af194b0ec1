"""The device-side GPT-2 tokenizer against Hugging Face's, on Python's own documentation and unicode edge cases.

transformers 5 has a single GPT-2 tokenizer class (GPT2Tokenizer is GPT2TokenizerFast, the Rust `tokenizers`
pipeline); the pre-Rust "slow" tokenizer's behaviour was its `regex`-package pattern, which
test_pretokenizer_equals_regex_and_tokenizers_on_every_assigned_code_point checks directly.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import unicodedata
from pathlib import Path

import pytest

from liteship.errors import BundleError
from liteship.runtime.tokenizer import ByteLevelBPETokenizer, StreamDecoder, gpt2_pretokenizer_pattern
from tests.gpt2_tokenizer_fixture import EOS_TOKEN, make_tokenizer_files, pydoc_texts

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _transformers():
    return pytest.importorskip("transformers")  # the reference; the runtime itself never imports it


PLAIN_ADDED = ["<|user|>", " liteship", "Python3", "数据"]
FLAGGED_ADDED = [
    {"content": "<mask>", "lstrip": True, "rstrip": True},
    {"content": "[SEP]", "special": True, "normalized": False},
    {"content": "tok", "single_word": True},
    # "ing" is (after training) also a vocabulary token: an added token may reuse an existing id
    {"content": "ing", "single_word": True, "normalized": True},
    {"content": "<longer-token>", "normalized": True},
    {"content": "<longer", "normalized": False},  # non-normalized pass runs first and wins over the longer one
    {"content": "<|us"},  # a prefix of "<|user|>" in the same pass: the longest match must win
]

EDGE_CASES = [
    "",
    " ",
    "   ",
    "\n",
    "Hello world",
    " Hello world",
    "Hello  world   ",
    "trailing spaces   \n   leading",
    "a\t\tb\n\n\n  c\r\nd",
    "tabs\t and\u3000ideographic\xa0nbsp\u2009thin\u202fnarrow",
    "don't DON'T I'm you're we've they'll he'd it's 's 'S ''s",
    "numbers 123 4567890 3.14159 1e-9 ½ ² ٣ 五",
    "Héllo wörld, naïve café, Ærøskøbing, İstanbul, straße",
    "e\u0301 a\u0308\u0304 \u0915\u094d\u0937 \u05e9\u05c1\u05b8",  # combining marks, Devanagari conjunct, Hebrew points
    "北京欢迎你。東京は日本の首都です。서울 특별시",
    "emoji 👩\u200d👩\u200d👧 🇫🇷🇩🇪 👍🏽 ❤️ 🤖!",
    "control \x00\x01\x1c\x1d\x1e\x1f\x7f end",
    "<|endoftext|>",
    "a<|endoftext|>b <|endoftext|> c<|endoftext|><|endoftext|>",
    "<|user|>hi <|user|> liteship liteship  liteship",
    "Python3Python3 数据数据",
    "x" * 500,
    "  \n  " * 20 + "end",
    "mixed 'quote' \"double\" (parens) [brackets] {braces} --dash-- ...ellipsis…",
]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    pytest.importorskip("tokenizers")  # trains the test vocabulary
    return make_tokenizer_files(tmp_path_factory.mktemp("tok"), vocab_size=1000, added_tokens=PLAIN_ADDED)


@pytest.fixture(scope="module")
def flagged_files(tmp_path_factory):
    pytest.importorskip("tokenizers")
    return make_tokenizer_files(tmp_path_factory.mktemp("tokf"), vocab_size=1000,
                                added_tokens=PLAIN_ADDED + FLAGGED_ADDED)


@pytest.fixture(scope="module")
def hf_from_vocab_merges(files, tmp_path_factory):
    """Hugging Face loading GPT-2 files the classic way: vocab.json + merges.txt, then add_tokens."""
    d = tmp_path_factory.mktemp("hf_vm")
    shutil.copy(files["vocab"], d / "vocab.json")
    shutil.copy(files["merges"], d / "merges.txt")
    hf = _transformers().GPT2TokenizerFast.from_pretrained(str(d))
    hf.add_tokens(PLAIN_ADDED)
    return hf


@pytest.fixture(scope="module")
def hf_from_json(flagged_files):
    return _transformers().GPT2TokenizerFast(tokenizer_file=str(flagged_files["tokenizer_json"]))


@pytest.fixture(scope="module")
def tok(files):
    return ByteLevelBPETokenizer.from_files(files["vocab"], files["merges"], files["added_tokens"])


@pytest.fixture(scope="module")
def tok_json(flagged_files):
    return ByteLevelBPETokenizer.from_tokenizer_json(flagged_files["tokenizer_json"])


def hf_ids(hf, text):
    return hf(text)["input_ids"]


def first_difference(a, b):
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i, a[max(0, i - 3):i + 4], b[max(0, i - 3):i + 4]
    return min(len(a), len(b)), len(a), len(b)


# ----------------------------------------------------------------- pre-tokenizer


def _assigned_code_points(sample_private_use: int = 1):
    """Code points this Python's Unicode database assigns; planes 15-16 (131k private-use characters, all one
    class) are thinned to every `sample_private_use`-th."""
    return [cp for cp in range(0x110000)
            if not 0xD800 <= cp < 0xE000 and unicodedata.category(chr(cp)) != "Cn"
            and (cp < 0xF0000 or cp % sample_private_use == 0)]


def test_pretokenizer_equals_regex_and_tokenizers_on_every_assigned_code_point():
    """Every code point this Python's Unicode database assigns is classed as \\p{L}, \\p{N}, \\s or other exactly as
    the `regex` package (the old slow tokenizer) and tokenizers' Oniguruma (the fast one) class it."""
    regex = pytest.importorskip("regex")
    pre_tokenizers = pytest.importorskip("tokenizers.pre_tokenizers")

    from liteship.runtime.tokenizer import _BYTE_TRANSLATION

    slow_pattern = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    fast_pretokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    code_points = _assigned_code_points(sample_private_use=101)
    # Each probe puts c after punctuation, before a letter, before a digit, after a space and before a space,
    # so its class decides how the probe splits. Probes are joined in chunks (tokenizers is slow on huge strings);
    # a chunk ends in a letter and the next starts with "!", so chunking does not change the pieces.
    for start in range(0, len(code_points), 4000):
        text = "".join(f"!{c}a{c}1 {c}! {c}{c} x" for c in map(chr, code_points[start:start + 4000]))
        mine = gpt2_pretokenizer_pattern().findall(text)
        slow = slow_pattern.findall(text)
        assert mine == slow, first_difference(mine, slow)
        fast = [piece for piece, _ in fast_pretokenizer.pre_tokenize_str(text)]
        mine_mapped = [p.encode("utf-8").decode("latin-1").translate(_BYTE_TRANSLATION) for p in mine]
        assert mine_mapped == fast, first_difference(mine_mapped, fast)


def test_pretokenizer_treats_information_separators_as_punctuation_not_space():
    # stdlib re's \s matches U+001C..U+001F; GPT-2 (Unicode White_Space) does not: regression guard
    assert gpt2_pretokenizer_pattern().findall("a \x1c\x1db") == ["a", " \x1c\x1d", "b"]


# ----------------------------------------------------------------- encode equals Hugging Face


def test_encode_equals_hf_on_every_pydoc_topic(tok, hf_from_vocab_merges):
    for text in pydoc_texts():
        ids = tok.encode(text)
        ref = hf_ids(hf_from_vocab_merges, text)
        assert ids == ref, first_difference(ids, ref)


def test_encode_equals_hf_on_all_of_pydoc_as_one_text(tok_json, hf_from_json):
    text = "\n\n".join(pydoc_texts())  # ~465k characters, one call
    ids = tok_json.encode(text)
    ref = hf_ids(hf_from_json, text)
    assert len(ids) > 100_000
    assert ids == ref, first_difference(ids, ref)


@pytest.mark.parametrize("text", EDGE_CASES)
def test_encode_equals_hf_on_edge_cases(tok, hf_from_vocab_merges, tok_json, hf_from_json, text):
    assert tok.encode(text) == hf_ids(hf_from_vocab_merges, text)
    assert tok_json.encode(text) == hf_ids(hf_from_json, text)


@pytest.mark.parametrize("text", [
    "a <mask> b",            # lstrip + rstrip swallow both spaces
    "a\t<mask>\t<mask>\u2000x",  # the second lstrip must not take what the first rstrip already took
    "<mask><mask> <mask>",
    "tok tokens atok tok_ tok. (tok)",  # single_word: only where no word character touches it
    "singing ing ing! é\u0301ing",
    "x<longer-token>y <longer",
    "[SEP]x[SEP] [SEP]",
    "<|user|> <|us <|user <|user|>|>",
])
def test_added_token_flags_equal_hf(tok_json, hf_from_json, text):
    assert tok_json.encode(text) == hf_ids(hf_from_json, text)


def test_added_tokens_are_cut_out_before_bpe(tok):
    ids = tok.encode("a<|endoftext|>b<|user|>")
    assert ids[1] == tok.eos_token_id and ids[-1] == tok.token_to_id("<|user|>")
    # the text around an added token is pre-tokenized on its own, so " liteship" the added token wins over BPE
    assert tok.encode(" liteship") == [tok.token_to_id(" liteship")]


def test_random_unicode_strings_equal_hf_and_round_trip(tok, hf_from_vocab_merges):
    """Seeded random strings mixing ASCII, whitespace runs, accents, combining marks, CJK, emoji, any assigned
    code point and the added tokens; encode must equal Hugging Face and decode must give the string back."""
    rng = random.Random(20261122)
    assigned = _assigned_code_points()
    alphabets = [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789",
        " \t\n\r\u3000\xa0\u2028\x0b\x0c",
        " " * 8,
        "'\".,;:!?()-_/\\<>|[]{}@#$%^&*+=~`",
        "éèêëàâäôöûüçñåæøßÉÀÇŒœ",
        "\u0300\u0301\u0302\u0303\u0308\u0327\u0338\u20d7\u094d\u05b8",
        "的一是不了人我在有他这中大来上国个到说们为子和你地出道也时年",
        "😀😂🤖👍🏽👩\u200d💻🇯🇵❤\ufe0f✨🔥",
    ]
    added = ["<|user|>", " liteship", "<|endoftext|>", "Python3", "数据", "<|", "|>"]
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(1, 12)):
            kind = rng.random()
            if kind < 0.1:
                parts.append(rng.choice(added))
            elif kind < 0.25:
                parts.append("".join(chr(rng.choice(assigned)) for _ in range(rng.randint(1, 4))))
            else:
                alphabet = rng.choice(alphabets)
                parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))))
        text = "".join(parts)
        ids = tok.encode(text)
        assert ids == hf_ids(hf_from_vocab_merges, text), repr(text)
        assert tok.decode(ids) == text, repr(text)


def test_long_words_equal_hf(tok, hf_from_vocab_merges):
    """Words longer than the heap threshold (a pasted hash, a rule of dashes) take the O(n log n) merge path."""
    rng = random.Random(7)
    for text in ["".join(rng.choice("abcdefghij") for _ in range(5000)), "ab" * 3000, "-" * 4000 + "=" * 70,
                 "9" * 3000, " " * 2000 + "x", "é" * 1000, "北京" * 500, pydoc_texts()[3].replace(" ", "")[:20000]]:
        assert tok.encode(text) == hf_ids(hf_from_vocab_merges, text)


def test_heap_merge_equals_the_simple_loop_on_every_word(files, monkeypatch):
    """Both BPE paths on every pydoc word and on random character soups: forcing the heap path (threshold 1) must
    not change an id."""
    import liteship.runtime.tokenizer as module

    rng = random.Random(3)
    words = set(gpt2_pretokenizer_pattern().findall(" ".join(pydoc_texts()[:20])))
    words |= {"".join(chr(rng.randrange(32, 0x3000)) for _ in range(rng.randint(2, 60))) for _ in range(2000)}
    monkeypatch.setattr(module, "_LONG_WORD", 10**9)
    simple = ByteLevelBPETokenizer.from_files(files["vocab"], files["merges"])
    expected = {w: simple._bpe(w) for w in words}
    monkeypatch.setattr(module, "_LONG_WORD", 1)
    heap = ByteLevelBPETokenizer.from_files(files["vocab"], files["merges"])
    assert {w: heap._bpe(w) for w in words} == expected


def test_add_prefix_space_equals_hf(flagged_files, tmp_path):
    spec = json.loads(flagged_files["tokenizer_json"].read_text(encoding="utf-8"))
    spec["pre_tokenizer"]["add_prefix_space"] = True
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    hf = _transformers().GPT2TokenizerFast(tokenizer_file=str(path))
    tok = ByteLevelBPETokenizer.from_tokenizer_json(path)
    for text in ["Hello", " Hello", "a<|user|>b <|user|> c", "<|endoftext|>x", "\nx"]:
        assert tok.encode(text) == hf_ids(hf, text), repr(text)


def test_post_processor_template_equals_hf(flagged_files, tmp_path):
    spec = json.loads(flagged_files["tokenizer_json"].read_text(encoding="utf-8"))
    eos = spec["model"]["vocab"][EOS_TOKEN]
    sep = next(t["id"] for t in spec["added_tokens"] if t["content"] == "[SEP]")
    spec["post_processor"] = {"type": "Sequence", "processors": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
        {"type": "TemplateProcessing",
         "single": [{"SpecialToken": {"id": EOS_TOKEN, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                    {"SpecialToken": {"id": "[SEP]", "type_id": 0}}],
         "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
         "special_tokens": {EOS_TOKEN: {"id": EOS_TOKEN, "ids": [eos], "tokens": [EOS_TOKEN]},
                            "[SEP]": {"id": "[SEP]", "ids": [sep], "tokens": ["[SEP]"]}}}]}
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    hf = _transformers().GPT2TokenizerFast(tokenizer_file=str(path))
    tok = ByteLevelBPETokenizer.from_tokenizer_json(path)
    for text in ["Hello world", ""]:
        assert tok.encode(text) == hf_ids(hf, text) and tok.encode(text)[0] == eos and tok.encode(text)[-1] == sep
        assert tok.encode(text, add_special_tokens=False) == hf(text, add_special_tokens=False)["input_ids"]


def test_merges_in_string_form_load_the_same(flagged_files, tmp_path, tok_json):
    spec = json.loads(flagged_files["tokenizer_json"].read_text(encoding="utf-8"))
    spec["model"]["merges"] = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec), encoding="utf-8")
    text = pydoc_texts()[0]
    assert ByteLevelBPETokenizer.from_tokenizer_json(path).encode(text) == tok_json.encode(text)


# ----------------------------------------------------------------- vocabulary


def test_vocabulary_accessors_equal_hf(tok, hf_from_vocab_merges):
    assert tok.vocab_size == len(hf_from_vocab_merges) == 1001 + len(PLAIN_ADDED)
    assert tok.eos_token_id == hf_from_vocab_merges.eos_token_id == 1000
    for token in ["<|endoftext|>", "<|user|>", "Ġthe", "!"]:
        assert tok.token_to_id(token) == hf_from_vocab_merges.convert_tokens_to_ids(token)
        assert tok.id_to_token(tok.token_to_id(token)) == token
    assert tok.token_to_id("not-a-token-at-all") is None


# ----------------------------------------------------------------- decode and streaming


@pytest.mark.parametrize("skip", [False, True])
def test_decode_equals_hf(tok, hf_from_vocab_merges, skip):
    text = "".join(EDGE_CASES[4:]) + pydoc_texts()[1][:3000]
    ids = tok.encode(text)
    assert tok.decode(ids, skip_special_tokens=skip) == hf_from_vocab_merges.decode(
        ids, skip_special_tokens=skip, clean_up_tokenization_spaces=False)
    if skip:
        assert EOS_TOKEN not in tok.decode(ids, skip_special_tokens=True)


def test_decode_of_a_split_character_is_replaced_not_raised(tok):
    ids = tok.encode("北")  # one CJK character = 3 bytes; with a 1000-token vocab, several tokens
    assert len(ids) > 1
    assert tok.decode(ids[:-1]).endswith("\ufffd")
    assert tok.decode(ids) == "北"


def test_stream_decoder_never_emits_half_a_character(tok):
    text = "Streaming 北京欢迎你 👩\u200d👩\u200d👧 naïve e\u0301<|endoftext|> end"
    ids = tok.encode(text)
    pieces = list(tok.decode_stream(ids))
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) > 5  # it really streams
    stream = StreamDecoder(tok)
    per_token = [stream.push(i) for i in tok.encode("北")]
    assert per_token[-1] == "北" and all(p == "" for p in per_token[:-1])


def test_stream_decoder_flushes_an_unfinished_character_as_replacement(tok):
    ids = tok.encode("ok 北")[:-1]
    assert "".join(tok.decode_stream(ids)) == tok.decode(ids)
    assert tok.decode(ids).endswith("\ufffd")


def test_stream_decoder_skips_special_tokens(tok):
    ids = tok.encode("a<|endoftext|>b")
    assert "".join(tok.decode_stream(ids, skip_special_tokens=True)) == "ab"


# ----------------------------------------------------------------- bundle and errors


class _FolderBundle:
    """The slice of liteship.runtime.bundle.Bundle the tokenizer uses: manifest, config and asset(role)."""

    def __init__(self, root: Path, assets: dict, config: dict | None = None):
        self.root = root
        self.manifest = {"assets": assets, "config": config or {}}
        self.config = self.manifest["config"]

    def asset(self, role):
        return self.root / self.manifest["assets"][role]


def test_from_bundle_reads_tokenizer_json_or_vocab_merges_added_tokens(files, tok):
    root = files["dir"]
    by_json = ByteLevelBPETokenizer.from_bundle(_FolderBundle(root, {"tokenizer_json": "tokenizer.json"}))
    by_files = ByteLevelBPETokenizer.from_bundle(_FolderBundle(
        root, {"vocab": "vocab.json", "merges": "merges.txt", "added_tokens": "added_tokens.json"}))
    text = "Hello <|user|> liteship 数据<|endoftext|>"
    assert by_json.encode(text) == by_files.encode(text) == tok.encode(text)
    assert by_json.eos_token_id == by_files.eos_token_id == 1000


def test_from_bundle_takes_eos_from_the_manifest_config(files):
    bundle = _FolderBundle(files["dir"], {"tokenizer_json": "tokenizer.json"}, config={"eos_token_id": 1001})
    assert ByteLevelBPETokenizer.from_bundle(bundle).eos_token_id == 1001
    # an id the vocabulary lacks (gpt2's 50256 in a config over a 1000-token vocab) falls back to <|endoftext|>
    bundle = _FolderBundle(files["dir"], {"vocab": "vocab.json", "merges": "merges.txt"},
                           config={"eos_token_id": 50256, "eos_token": EOS_TOKEN})
    assert ByteLevelBPETokenizer.from_bundle(bundle).eos_token_id == 1000


def test_from_bundle_without_tokenizer_assets_names_the_roles(files):
    with pytest.raises(BundleError, match="tokenizer_json"):
        ByteLevelBPETokenizer.from_bundle(_FolderBundle(files["dir"], {"labels": "labels.txt"}))


def test_bad_files_raise_bundle_errors_naming_the_problem(files, tmp_path):
    bad_merges = tmp_path / "merges.txt"
    bad_merges.write_text("#version: 0.2\nĠ t\nthis line has three\n", encoding="utf-8")
    with pytest.raises(BundleError, match="line 3"):
        ByteLevelBPETokenizer.from_files(files["vocab"], bad_merges)
    with pytest.raises(BundleError, match="not found"):
        ByteLevelBPETokenizer.from_files(tmp_path / "missing.json", files["merges"])
    unknown = tmp_path / "unknown_merges.txt"
    unknown.write_text("#version: 0.2\nzz qq\n", encoding="utf-8")
    with pytest.raises(BundleError, match="'zzqq'"):
        ByteLevelBPETokenizer.from_files(files["vocab"], unknown)
    wordpiece = tmp_path / "tokenizer.json"
    wordpiece.write_text(json.dumps({"model": {"type": "WordPiece", "vocab": {}}}), encoding="utf-8")
    with pytest.raises(BundleError, match="WordPiece"):
        ByteLevelBPETokenizer.from_tokenizer_json(wordpiece)
