"""GPT-2 byte-level BPE tokenizer in pure Python, equal to Hugging Face's on real text.

No transformers, no tokenizers, no `regex` package: a device needs only the standard library. The pipeline is the
one Hugging Face's `tokenizers` runs for GPT-2 (`GPT2Tokenizer` in transformers 5 is that Rust pipeline):

1. added tokens (special ones like ``<|endoftext|>`` and ones a fine-tune added) are cut out of the text first,
   leftmost-longest, honouring their ``lstrip`` / ``rstrip`` / ``single_word`` flags; tokens with
   ``normalized=False`` are matched in a first pass over the whole text, ``normalized=True`` ones in a second pass
   over what is left (GPT-2 has no normalizer, so both passes see the raw text);
2. the rest is split by GPT-2's pre-tokenizer pattern
   ``'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+``;
3. each piece's UTF-8 bytes are mapped to printable characters (``bytes_to_unicode``) and merged by BPE rank.

Stdlib ``re`` has no ``\\p{L}`` / ``\\p{N}``, and its ``\\s`` is ``str.isspace()``, which also matches U+001C..U+001F
where Oniguruma and ``regex`` use the Unicode White_Space property. So the pattern is rebuilt from explicit
character classes computed from ``unicodedata`` (general categories L* and N*) and the White_Space list below.
Characters assigned in a newer Unicode version than this Python's ``unicodedata`` knows are classed as "other"
(Python 3.11: Unicode 14; transformers' tokenizers may know a newer version).

Bundle asset roles read by :meth:`ByteLevelBPETokenizer.from_bundle` (``manifest["assets"]``):

- ``tokenizer_json``: a Hugging Face ``tokenizer.json`` (preferred when present: it carries the added tokens
  and their flags);
- otherwise ``vocab`` (``vocab.json``) and ``merges`` (``merges.txt``), plus optionally ``added_tokens``: a JSON file
  that is either a list of ``{"id", "content", "special", "lstrip", "rstrip", "single_word", "normalized"}``
  (the ``added_tokens`` list of tokenizer.json), or Hugging Face's ``added_tokens.json`` ``{content: id}``, or the
  ``added_tokens_decoder`` mapping of ``tokenizer_config.json`` ``{id: {"content": ..., ...}}``.

The end-of-text token comes from ``manifest["config"]["eos_token_id"]`` (or ``"eos_token"``) when present, else
``<|endoftext|>`` if the vocabulary has it.
"""

from __future__ import annotations

import codecs
import heapq
import json
import re
import unicodedata
from pathlib import Path
from typing import Iterable, Iterator

from liteship.errors import BundleError

DEFAULT_EOS_TOKEN = "<|endoftext|>"

# Unicode White_Space (PropList.txt): what `\s` matches in Oniguruma (tokenizers) and the `regex` package.
# Stdlib re's `\s` also matches U+001C..U+001F (str.isspace), which GPT-2's tokenizer treats as punctuation.
_WHITE_SPACE = (
    "\u0009\u000a\u000b\u000c\u000d\u0020\u0085\u00a0\u1680"
    "\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
# Letters and numbers only exist in planes 0-3 (plane 14 holds tags and variation selectors, 15-16 private use),
# so scanning up to here finds every L*/N* code point while costing a quarter of a full scan.
_LAST_CODE_POINT_SCANNED = 0x3FFFF
_CONTRACTIONS = ("'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
_LONG_WORD = 48  # symbols; longer words are merged with a heap (see _merge_with_heap)
_CACHE_LIMIT = 100_000  # BPE results kept per tokenizer; cleared when full (words repeat, the hot set refills fast)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map.

    Printable Latin-1 bytes map to themselves; the other 68 (control bytes, space, 0x7F-0xA0, 0xAD) map to
    U+0100 onwards in byte order, so BPE never sees whitespace or control characters (space becomes 'Ġ').
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    mapping = {b: chr(b) for b in printable}
    n = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + n)
            n += 1
    return mapping


_BYTE_ENCODER = bytes_to_unicode()
_BYTE_DECODER = {c: b for b, c in _BYTE_ENCODER.items()}
# Translation table for latin-1-decoded UTF-8 bytes: one str.translate maps a whole piece at C speed.
_BYTE_TRANSLATION = {b: c for b, c in _BYTE_ENCODER.items()}


def _ranges_to_class(ranges: list[tuple[int, int]]) -> str:
    parts = []
    for lo, hi in ranges:
        parts.append(re.escape(chr(lo)) if lo == hi else f"{re.escape(chr(lo))}-{re.escape(chr(hi))}")
    return "".join(parts)


def _category_ranges(first_letter: str) -> list[tuple[int, int]]:
    ranges: list[tuple[int, int]] = []
    category = unicodedata.category
    start = None
    for cp in range(_LAST_CODE_POINT_SCANNED + 1):
        inside = category(chr(cp))[0] == first_letter
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            ranges.append((start, cp - 1))
            start = None
    if start is not None:
        ranges.append((start, _LAST_CODE_POINT_SCANNED))
    return ranges


_PATTERN: re.Pattern | None = None


def gpt2_pretokenizer_pattern() -> re.Pattern:
    """GPT-2's pre-tokenizer regex for stdlib re, with \\p{L}, \\p{N} and \\s spelled out as classes (built once)."""
    global _PATTERN
    if _PATTERN is None:
        letters = _ranges_to_class(_category_ranges("L"))
        numbers = _ranges_to_class(_category_ranges("N"))
        space = "".join(re.escape(c) for c in _WHITE_SPACE)
        _PATTERN = re.compile(
            "|".join(_CONTRACTIONS)
            + f"| ?[{letters}]+| ?[{numbers}]+| ?[^{space}{letters}{numbers}]+|[{space}]+(?![^{space}])|[{space}]+"
        )
    return _PATTERN


def _word_char_class() -> str:
    # Rust regex `\w` (used by tokenizers for single_word): Alphabetic, marks, decimal digits, connector punctuation
    # and joiners. Alphabetic is approximated by letters + letter numbers; the Other_Alphabetic marks are in M*.
    ranges = _category_ranges("L") + _category_ranges("M")
    nd_nl_pc = [cp for cp in range(_LAST_CODE_POINT_SCANNED + 1)
                if unicodedata.category(chr(cp)) in ("Nd", "Nl", "Pc")]
    ranges += [(cp, cp) for cp in nd_nl_pc] + [(0x200C, 0x200D)]
    return _ranges_to_class(sorted(ranges))


def _merge_with_heap(parts: list, ranks: dict) -> list:
    """BPE of a long word in O(n log n): a heap of (rank, position) over a linked list of symbols.

    The same merges as the simple loop in _bpe (lowest rank first, leftmost first among equal ranks), which
    rescans the word for every merge and is quadratic on a prompt holding a 20k-character "word".
    """
    n = len(parts)
    sym = list(parts)
    nxt = list(range(1, n)) + [-1]
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        r = ranks.get((sym[i], sym[i + 1]))
        if r is not None:
            heap.append((r, i, sym[i], sym[i + 1]))
    heapq.heapify(heap)
    while heap:
        r, i, a, b = heapq.heappop(heap)
        j = nxt[i]
        if sym[i] != a or j == -1 or sym[j] != b:
            continue  # stale: a neighbour was merged since this pair was pushed
        sym[i] = a + b
        sym[j] = None  # removed from the list
        k = nxt[j]
        nxt[i] = k
        if k != -1:
            prv[k] = i
            rk = ranks.get((sym[i], sym[k]))
            if rk is not None:
                heapq.heappush(heap, (rk, i, sym[i], sym[k]))
        p = prv[i]
        if p != -1:
            rp = ranks.get((sym[p], sym[i]))
            if rp is not None:
                heapq.heappush(heap, (rp, p, sym[p], sym[i]))
    out, i = [], 0
    while i != -1:
        out.append(sym[i])
        i = nxt[i]
    return out


class AddedToken:
    """A token matched in the raw text before BPE (Hugging Face AddedToken semantics)."""

    __slots__ = ("id", "content", "special", "lstrip", "rstrip", "single_word", "normalized")

    def __init__(self, id: int, content: str, *, special: bool = False, lstrip: bool = False,
                 rstrip: bool = False, single_word: bool = False, normalized: bool | None = None):
        self.id = int(id)
        self.content = content
        self.special = bool(special)
        self.lstrip = bool(lstrip)
        self.rstrip = bool(rstrip)
        self.single_word = bool(single_word)
        # tokenizers' default: special tokens match the raw text, others the normalized text
        self.normalized = (not special) if normalized is None else bool(normalized)

    @classmethod
    def from_dict(cls, d: dict, id: int | None = None) -> "AddedToken":
        return cls(d["id"] if id is None else id, d["content"], special=d.get("special", False),
                   lstrip=d.get("lstrip", False), rstrip=d.get("rstrip", False),
                   single_word=d.get("single_word", False), normalized=d.get("normalized"))

    def __repr__(self) -> str:
        return f"AddedToken({self.id}, {self.content!r}, special={self.special})"


def _load_json(path, what: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"{what} not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{what} {path} is not valid JSON: {e}") from None


def _parse_added_tokens(spec, vocab: dict[str, int], special_tokens: Iterable[str]) -> list[AddedToken]:
    """Added tokens from a path or an already-loaded object in any of the formats listed in the module docstring."""
    if spec is None:
        spec = []
    elif isinstance(spec, (str, Path)):
        spec = _load_json(spec, "added tokens file")
    tokens: list[AddedToken] = []
    if isinstance(spec, dict) and "added_tokens_decoder" in spec:
        spec = spec["added_tokens_decoder"]
    if isinstance(spec, dict):
        for key, value in spec.items():
            if isinstance(value, dict):  # added_tokens_decoder: {id: {...}}
                tokens.append(AddedToken.from_dict(value, id=int(key)))
            else:  # added_tokens.json: {content: id}
                tokens.append(AddedToken(int(value), key))
    elif isinstance(spec, list):
        next_id = max(vocab.values(), default=-1) + 1
        for item in spec:
            if isinstance(item, str):  # bare contents: ids follow the vocabulary, as tokenizer.add_tokens does
                item_id = vocab.get(item)
                if item_id is None:
                    item_id, next_id = next_id, next_id + 1
                tokens.append(AddedToken(item_id, item))
            else:
                tokens.append(AddedToken.from_dict(item))
    else:
        raise BundleError(f"added tokens must be a list or a mapping, got {type(spec).__name__}")
    special = set(special_tokens)
    have = {t.content for t in tokens}
    for t in tokens:
        if t.content in special and not t.special:
            t.special, t.normalized = True, False
    for content in special:  # e.g. <|endoftext|> listed only in vocab.json, as in GPT-2's own files
        if content not in have and content in vocab:
            tokens.append(AddedToken(vocab[content], content, special=True))
    return tokens


def _single_template(spec: dict, path) -> tuple[list[int], list[int]]:
    """Ids the post-processor puts around a single text (transformers' add_special_tokens=True): a
    TemplateProcessing's special tokens before and after sequence A; ByteLevel only fixes offsets, so none."""
    post = spec.get("post_processor")
    processors = (post or {}).get("processors", [post] if post else [])  # "Sequence" holds a list
    before: list[int] = []
    after: list[int] = []
    for proc in processors:
        kind = proc.get("type")
        if kind == "ByteLevel":
            continue
        if kind != "TemplateProcessing":
            raise BundleError(f"tokenizer file {path}: post_processor {kind!r} is not supported "
                              "(GPT-2 uses ByteLevel or TemplateProcessing)")
        target = before
        for piece in proc.get("single", []):
            if "Sequence" in piece:
                target = after
            else:
                name = piece["SpecialToken"]["id"]
                target.extend(proc["special_tokens"][name]["ids"])
    return before, after


def _read_merges_txt(path) -> list[tuple[str, str]]:
    try:
        lines = Path(path).read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise BundleError(f"merges file not found: {path}") from None
    merges = []
    for n, line in enumerate(lines, 1):
        if line.startswith("#version") or not line.strip():
            continue
        parts = line.rstrip("\r").split(" ")
        if len(parts) != 2:
            raise BundleError(f"merges file {path} line {n} is not 'a b': {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


class ByteLevelBPETokenizer:
    """GPT-2's tokenizer: added tokens, then the GPT-2 pre-tokenizer, then byte-level BPE."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], added_tokens: Iterable[AddedToken] = (),
                 *, eos_token: str | int | None = DEFAULT_EOS_TOKEN, add_prefix_space: bool = False,
                 use_regex: bool = True, ignore_merges: bool = False, unk_token: str | None = None,
                 fuse_unk: bool = False, template: tuple[list[int], list[int]] = ([], [])):
        self.encoder = dict(vocab)
        self.decoder = {i: t for t, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(merges):
            if a + b not in self.encoder:
                raise BundleError(f"merge {a!r} {b!r} makes {a + b!r}, which is not in the vocabulary")
            self.bpe_ranks.setdefault((a, b), rank)
        self.added_tokens = sorted(added_tokens, key=lambda t: t.id)
        self._added_by_id = {t.id: t for t in self.added_tokens}
        self._added_by_content = {t.content: t for t in self.added_tokens}
        self._vocab_size = len(set(self.decoder) | set(self._added_by_id))
        self.add_prefix_space = add_prefix_space
        self.use_regex = use_regex
        self.ignore_merges = ignore_merges
        self.unk_id = self.encoder.get(unk_token) if unk_token is not None else None
        if unk_token is not None and self.unk_id is None:
            raise BundleError(f"unk token {unk_token!r} is not in the vocabulary")
        self.fuse_unk = fuse_unk
        self.template = (list(template[0]), list(template[1]))  # ids put before / after every encoded text
        self._tries = [self._build_matcher([t for t in self.added_tokens if not t.normalized]),
                       self._build_matcher([t for t in self.added_tokens if t.normalized])]
        self._pattern = gpt2_pretokenizer_pattern() if use_regex else None
        self._word_re = None
        self._cache: dict[str, tuple[int, ...]] = {}
        if isinstance(eos_token, int):
            self.eos_token_id: int | None = eos_token
        else:
            self.eos_token_id = self.token_to_id(eos_token) if eos_token is not None else None

    # ----------------------------------------------------------------- constructors

    @classmethod
    def from_files(cls, vocab_json, merges_txt, added_tokens=None, special_tokens: Iterable[str] = (DEFAULT_EOS_TOKEN,),
                   **kwargs) -> "ByteLevelBPETokenizer":
        """From GPT-2's ``vocab.json`` + ``merges.txt``; ``added_tokens`` is a path or object (see module docstring).

        ``special_tokens`` are contents treated as special added tokens when the vocabulary or the added tokens
        contain them (GPT-2 keeps ``<|endoftext|>`` in vocab.json only).
        """
        vocab = _load_json(vocab_json, "vocab file")
        if not isinstance(vocab, dict):
            raise BundleError(f"vocab file {vocab_json} must map token -> id")
        merges = _read_merges_txt(merges_txt)
        return cls(vocab, merges, _parse_added_tokens(added_tokens, vocab, special_tokens), **kwargs)

    @classmethod
    def from_tokenizer_json(cls, path, **kwargs) -> "ByteLevelBPETokenizer":
        """From a Hugging Face ``tokenizer.json`` whose model is byte-level BPE (GPT-2 and its fine-tunes)."""
        spec = _load_json(path, "tokenizer file")
        model = spec.get("model") or {}
        if model.get("type", "BPE") != "BPE" or "vocab" not in model or "merges" not in model:
            raise BundleError(f"tokenizer file {path} does not hold a BPE model (model.type={model.get('type')!r})")
        if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix") or model.get("byte_fallback"):
            raise BundleError(f"tokenizer file {path}: subword prefixes/suffixes and byte_fallback are not GPT-2 BPE")
        if spec.get("normalizer") is not None:
            raise BundleError(f"tokenizer file {path} has a normalizer ({spec['normalizer'].get('type')}); "
                              "GPT-2 byte-level BPE has none")
        pre = spec.get("pre_tokenizer") or {}
        if pre.get("type") != "ByteLevel":
            raise BundleError(f"tokenizer file {path}: pre_tokenizer is {pre.get('type')!r}, expected ByteLevel")
        merges = []
        for m in model["merges"]:
            a, b = m.split(" ") if isinstance(m, str) else m  # "a b" (tokenizers < 0.20) or ["a", "b"]
            merges.append((a, b))
        added = [AddedToken.from_dict(t) for t in spec.get("added_tokens") or []]
        options = dict(add_prefix_space=pre.get("add_prefix_space", False), use_regex=pre.get("use_regex", True),
                       ignore_merges=model.get("ignore_merges", False), unk_token=model.get("unk_token"),
                       fuse_unk=model.get("fuse_unk", False), template=_single_template(spec, path))
        options.update(kwargs)
        return cls(model["vocab"], merges, added, **options)

    @classmethod
    def from_bundle(cls, bundle) -> "ByteLevelBPETokenizer":
        """From a bundle's assets (roles ``tokenizer_json``, else ``vocab`` + ``merges`` [+ ``added_tokens``])."""
        if isinstance(bundle, (str, Path)):
            from liteship.runtime.bundle import Bundle

            bundle = Bundle.open(bundle)
        roles = (bundle.manifest.get("assets") or {})
        config = getattr(bundle, "config", None) or bundle.manifest.get("config") or {}
        eos = config.get("eos_token") if isinstance(config.get("eos_token"), str) else DEFAULT_EOS_TOKEN
        if "tokenizer_json" in roles:
            tok = cls.from_tokenizer_json(bundle.asset("tokenizer_json"), eos_token=eos)
        elif "vocab" in roles and "merges" in roles:
            added = bundle.asset("added_tokens") if "added_tokens" in roles else None
            tok = cls.from_files(bundle.asset("vocab"), bundle.asset("merges"), added, special_tokens=[eos],
                                 eos_token=eos)
        else:
            raise BundleError(f"bundle {getattr(bundle, 'root', '')} has no tokenizer: needs asset 'tokenizer_json' "
                              f"or 'vocab' + 'merges' (has {sorted(roles)})")
        # The model config's eos_token_id is what the model learned to emit; it wins when the vocabulary has it
        # (a config copied from gpt2 onto a small retrained vocabulary may name 50256, which does not exist).
        eos_id = config.get("eos_token_id")
        if isinstance(eos_id, int) and tok.id_to_token(eos_id) is not None:
            tok.eos_token_id = eos_id
        return tok

    # ----------------------------------------------------------------- vocabulary

    @property
    def vocab_size(self) -> int:
        """Distinct ids: the model vocabulary plus added tokens outside it (what ``len(hf_tokenizer)`` returns)."""
        return self._vocab_size

    def token_to_id(self, token: str) -> int | None:
        added = self._added_by_content.get(token)
        return added.id if added is not None else self.encoder.get(token)

    def id_to_token(self, id: int) -> str | None:
        added = self._added_by_id.get(id)
        return added.content if added is not None else self.decoder.get(id)

    # ----------------------------------------------------------------- encoding

    @staticmethod
    def _build_matcher(tokens: list[AddedToken]):
        tokens = [t for t in tokens if t.content]
        if not tokens:
            return None
        # Longest first: at a given start position, re's alternation then picks the longest content, which with
        # the left-to-right scan is Aho-Corasick's leftmost-longest match, as tokenizers uses.
        ordered = sorted(tokens, key=lambda t: -len(t.content))
        pattern = re.compile("|".join(re.escape(t.content) for t in ordered))
        return pattern, {t.content: t for t in ordered}

    def _is_word_char(self, ch: str) -> bool:
        if self._word_re is None:
            self._word_re = re.compile(f"[{_word_char_class()}]")
        return self._word_re.match(ch) is not None

    def _split_added(self, text: str, matcher) -> list[tuple[str, AddedToken | None]]:
        """Cut added tokens out of `text` the way tokenizers' AddedVocabulary.find_matches does."""
        pattern, by_content = matcher
        out: list[tuple[str, AddedToken | None]] = []
        offset = 0
        for m in pattern.finditer(text):
            start, stop = m.start(), m.end()
            tok = by_content[m.group()]
            if tok.single_word:
                if (start > 0 and self._is_word_char(text[start - 1])) or \
                        (stop < len(text) and self._is_word_char(text[stop])):
                    continue
            if tok.lstrip:
                new_start = start
                while new_start > 0 and text[new_start - 1] in _WHITE_SPACE:
                    new_start -= 1
                start = max(new_start, offset)
            if tok.rstrip:
                while stop < len(text) and text[stop] in _WHITE_SPACE:
                    stop += 1
            if offset < start:
                out.append((text[offset:start], None))
            out.append((text[start:stop], tok))
            offset = stop
        if offset < len(text):
            out.append((text[offset:], None))
        return out

    def _segments(self, text: str) -> list[tuple[str, AddedToken | None]]:
        segments: list[tuple[str, AddedToken | None]] = [(text, None)]
        for matcher in self._tries:
            if matcher is None:
                continue
            nxt: list[tuple[str, AddedToken | None]] = []
            for seg, tok in segments:
                nxt.extend([(seg, tok)] if tok is not None else self._split_added(seg, matcher))
            segments = nxt
        return segments

    def _bpe(self, piece: str) -> tuple[int, ...]:
        """Ids for one pre-tokenized piece (raw text); cached, since words repeat."""
        ids = self._cache.get(piece)
        if ids is not None:
            return ids
        word = piece.encode("utf-8").decode("latin-1").translate(_BYTE_TRANSLATION)
        encoder = self.encoder
        if self.ignore_merges and word in encoder:
            ids = (encoder[word],)
        else:
            parts = []
            for ch in word:
                if ch in encoder:
                    parts.append(ch)
                elif self.unk_id is not None:
                    parts.append(None)  # unknown symbol; never merges
                # else: tokenizers drops symbols missing from the vocabulary when there is no unk token
            ranks = self.bpe_ranks
            if len(parts) > _LONG_WORD:
                parts = _merge_with_heap(parts, ranks)
            while len(parts) > 1:
                best_rank, best = None, None
                for i in range(len(parts) - 1):
                    r = ranks.get((parts[i], parts[i + 1]))
                    if r is not None and (best_rank is None or r < best_rank):
                        best_rank, best = r, i
                if best is None:
                    break
                first, second = parts[best], parts[best + 1]
                merged, i, n = [], 0, len(parts)
                # Merge every occurrence left to right: the same result as merging the leftmost one at a time,
                # since a merge never recreates its own pair.
                while i < n:
                    if i < n - 1 and parts[i] == first and parts[i + 1] == second:
                        merged.append(first + second)
                        i += 2
                    else:
                        merged.append(parts[i])
                        i += 1
                parts = merged
            out = []
            for p in parts:
                if p is None:
                    if not (self.fuse_unk and out and out[-1] == self.unk_id):
                        out.append(self.unk_id)
                else:
                    out.append(encoder[p])
            ids = tuple(out)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[piece] = ids
        return ids

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Token ids of `text`, equal to Hugging Face's ``tokenizer(text)["input_ids"]`` for GPT-2 tokenizers.

        ``add_special_tokens`` applies a tokenizer.json post-processor template (none for GPT-2 itself)."""
        ids: list[int] = list(self.template[0]) if add_special_tokens else []
        for seg, tok in self._segments(text):
            if tok is not None:
                ids.append(tok.id)
                continue
            if self.add_prefix_space and not seg.startswith(" "):
                seg = " " + seg
            pieces = self._pattern.findall(seg) if self._pattern is not None else [seg]
            for piece in pieces:
                ids.extend(self._bpe(piece))
        if add_special_tokens:
            ids.extend(self.template[1])
        return ids

    # ----------------------------------------------------------------- decoding

    def _token_bytes(self, id: int, skip_special_tokens: bool) -> bytes:
        added = self._added_by_id.get(id)
        if added is not None:
            return b"" if (skip_special_tokens and added.special) else added.content.encode("utf-8")
        token = self.decoder.get(id)
        if token is None:
            return b""  # an id with no token (a padded embedding row); tokenizers skips it too
        try:
            return bytes(_BYTE_DECODER[c] for c in token)
        except KeyError:  # not a byte-level token: tokenizers' ByteLevel decoder keeps its UTF-8 as is
            return token.encode("utf-8")

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Text of `ids`; byte sequences cut mid-character become U+FFFD (errors="replace")."""
        data = b"".join(self._token_bytes(int(i), skip_special_tokens) for i in ids)
        return data.decode("utf-8", errors="replace")

    def stream_decoder(self, skip_special_tokens: bool = False) -> "StreamDecoder":
        return StreamDecoder(self, skip_special_tokens=skip_special_tokens)

    def decode_stream(self, ids: Iterable[int], skip_special_tokens: bool = False) -> Iterator[str]:
        """Yield text as `ids` arrive, never half a UTF-8 character; the pieces join to ``decode(ids)``."""
        stream = StreamDecoder(self, skip_special_tokens=skip_special_tokens)
        for i in ids:
            text = stream.push(i)
            if text:
                yield text
        tail = stream.flush()
        if tail:
            yield tail


class StreamDecoder:
    """Incremental decoder for streaming generation: ``push(id) -> str`` holds back an unfinished UTF-8 character.

    ``"".join(push(i) for i in ids) + flush() == tokenizer.decode(ids)``.
    """

    def __init__(self, tokenizer: ByteLevelBPETokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def push(self, token_id: int) -> str:
        return self._utf8.decode(self.tokenizer._token_bytes(int(token_id), self.skip_special_tokens))

    def flush(self) -> str:
        """Text still held back (an unfinished character becomes U+FFFD); the decoder is reset."""
        text = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return text
