"""Tokenizers: one token per character (`CharTokenizer`) or per word (`WordTokenizer`), with
five special tokens with fixed ids and the same interface.

    tok = CharTokenizer.from_texts(["hello world", "good day"])
    ids = tok.encode("hello")                     # [id('h'), id('e'), id('l'), id('l'), id('o')]
    tok.decode(ids)                               # "hello"
    ids, lengths = tok.encode_batch(["hi", "day"])  # [2, 3] int64 padded with pad_id, [2] int64
    tok.save("vocab.json"); tok = CharTokenizer.load("vocab.json")

Vocabulary. Ids `0 .. len(specials) - 1` are the special tokens, in the order of `specials`;
the characters follow, in the order given (`from_texts` sorts them by code point, so the same
texts give the same ids on every machine). With the default specials:

    id  token      use
    0   <pad>      padding of `encode_batch` (always id 0)
    1   <unk>      a character missing from the vocabulary (when `use_unk=True`)
    2   <sos>      start of sentence (autoregressive decoders)
    3   <eos>      end of sentence (`encode(..., add_eos=True)`)
    4   <blank>    the CTC blank
    5.. characters

The space is an ordinary token: words are separated by spaces and "a b" encodes to three
ids, so that `decode(encode(t)) == t` holds for every text made of vocabulary characters,
spaces included. Text is never parsed for special tokens: "<eos>" in a text is five
characters (each needing to be in the vocabulary), so a special id only ever comes from
`add_sos`/`add_eos`/padding or from a model's output.

Words. `WordTokenizer` splits text on whitespace and gives each word one id (ids after the
specials, as above); `decode` joins the words with one space, so `decode(encode(t)) ==
" ".join(t.split())`. For a small closed vocabulary (digits, commands) a word fires one
token per word instead of one per character, which suits CIF's frame rate.

    tok = WordTokenizer.from_texts(["three one four", "nine"])
    tok.encode("one nine")                        # [id('one'), id('nine')]
    tok.decode(tok.encode("one  nine"))           # "one nine"

`load_tokenizer(path)` reads either kind from the file `save` wrote (its `format` field).
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch

from ..checks import check_dtype, check_shape
from ..config import require
from ..errors import ConfigError, DataError, RangeError, ShapeError

__all__ = ["CharTokenizer", "WordTokenizer", "Tokenizer", "load_tokenizer", "SPECIALS", "PAD", "UNK", "SOS", "EOS",
           "BLANK", "PAD_ID", "UNK_ID", "SOS_ID", "EOS_ID", "BLANK_ID"]

PAD, UNK, SOS, EOS, BLANK = "<pad>", "<unk>", "<sos>", "<eos>", "<blank>"
SPECIALS: tuple[str, ...] = (PAD, UNK, SOS, EOS, BLANK)
PAD_ID, UNK_ID, SOS_ID, EOS_ID, BLANK_ID = range(5)  # their ids with the default specials

_FORMAT = "funcml.CharTokenizer"
_VERSION = 1
# What `<unk>` decodes to under strip_specials: one character, so that a CER counts it as one error.
_UNK_CHAR = "\ufffd"


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """A frozen, hashable character vocabulary (see the module docstring for the ids).

    Arguments:
        chars: the characters, one token each, ids `len(specials) ..` in this order; a space
            `" "` is allowed (and needed for multi-word text).
        specials: the special tokens, ids `0 ..` in this order; must hold `<pad>` first and
            `<unk>`, `<sos>`, `<eos>`, `<blank>` somewhere (extra names are allowed).
        use_unk: map a character outside the vocabulary to `<unk>`; if False, `encode`
            raises a DataError that names the character, its position and the text.
    """

    chars: tuple[str, ...]
    specials: tuple[str, ...] = SPECIALS
    use_unk: bool = True
    unit = "char"  # class attribute (not a field): what one token is
    _index: dict = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        chars, specials = tuple(self.chars), tuple(self.specials)
        object.__setattr__(self, "chars", chars)
        object.__setattr__(self, "specials", specials)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        require(not bad, self, f"every entry of chars must be one character, got {bad[:5]!r}")
        dup = sorted({c for c in chars if chars.count(c) > 1})
        require(not dup, self, f"chars has duplicates {dup!r}")
        require(bool(specials) and specials[0] == PAD, self,
                f"specials must start with {PAD!r} (id 0), got {list(specials)}")
        missing = [s for s in SPECIALS if s not in specials]
        require(not missing, self, f"specials lack {missing}; got {list(specials)}")
        require(len(set(specials)) == len(specials) and all(isinstance(s, str) and len(s) >= 2 for s in specials),
                self, f"specials must be distinct names of 2+ characters, got {list(specials)}")
        index = {tok: i for i, tok in enumerate(specials + chars)}
        object.__setattr__(self, "_index", index)

    # --- construction -------------------------------------------------------------------

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, specials: Sequence[str] = SPECIALS,
                   use_unk: bool = True) -> "CharTokenizer":
        """The vocabulary of every character in `texts`, sorted by code point."""
        if isinstance(texts, str):
            texts = [texts]
        seen: set[str] = set()
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"CharTokenizer.from_texts: texts[{i}] is {type(t).__name__}, expected str")
            seen.update(t)
        return cls(tuple(sorted(seen)), specials=tuple(specials), use_unk=use_unk)

    # --- the vocabulary -----------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Number of tokens, specials included (the classifier's output size)."""
        return len(self._index)  # specials and tokens are distinct, so this is len(specials) + len(tokens)

    def __len__(self) -> int:
        return self.vocab_size

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every token by id: the specials, then the characters."""
        return self.specials + self.chars

    @property
    def pad_id(self) -> int:
        return self._index[PAD]

    @property
    def unk_id(self) -> int:
        return self._index[UNK]

    @property
    def sos_id(self) -> int:
        return self._index[SOS]

    @property
    def eos_id(self) -> int:
        return self._index[EOS]

    @property
    def blank_id(self) -> int:
        return self._index[BLANK]

    @property
    def special_ids(self) -> tuple[int, ...]:
        return tuple(range(len(self.specials)))

    def token_to_id(self, token: str) -> int:
        """The id of a character or a special token name; RangeError if it has none."""
        try:
            return self._index[token]
        except (KeyError, TypeError):
            raise RangeError(f"token {token!r} is not in the vocabulary of {self.vocab_size} tokens") from None

    def id_to_token(self, i: int) -> str:
        """The token (a character or a special name) of id `i` in `[0, vocab_size)`."""
        i = self._check_id(i)
        return self.tokens[i]

    def _check_id(self, i, where: str = "id") -> int:
        if isinstance(i, torch.Tensor):
            i = int(i)
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
            raise RangeError(f"{where}: token id {i!r} is outside [0, {self.vocab_size})")
        return i

    # --- encoding -----------------------------------------------------------------------

    def encode(self, text: str, *, add_sos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, one per character, optionally framed by `<sos>` / `<eos>`.

        Raises: DataError for a character outside the vocabulary when `use_unk=False`.
        """
        if not isinstance(text, str):
            raise DataError(f"encode: expected a str, got {type(text).__name__}")
        ids = []
        for pos, ch in enumerate(text):
            i = self._index.get(ch)  # special names have 2+ characters, so a character never hits one
            if i is None:
                if not self.use_unk:
                    raise DataError(f"encode: character {ch!r} (U+{ord(ch):04X}) at position {pos} of text "
                                    f"{text!r} is not in the vocabulary; rebuild the tokenizer from texts that "
                                    "contain it, or use use_unk=True to map it to <unk>")
                i = self.unk_id
            ids.append(i)
        if add_sos:
            ids.insert(0, self.sos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def encode_batch(self, texts: Sequence[str], *, add_sos: bool = False,
                     add_eos: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode several texts and pad them with `pad_id`.

        Returns: `ids: [B, L] int64` (L = the longest encoding, 0 for an empty batch) and
        `lengths: [B] int64`, the number of valid ids in each row.
        """
        if isinstance(texts, str):
            raise DataError("encode_batch: expected a list of texts, got one str (use encode for one text)")
        encoded = [self.encode(t, add_sos=add_sos, add_eos=add_eos) for t in texts]
        lengths = torch.tensor([len(e) for e in encoded], dtype=torch.int64)
        width = max((len(e) for e in encoded), default=0)
        ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.int64)
        for b, e in enumerate(encoded):
            if e:
                ids[b, : len(e)] = torch.tensor(e, dtype=torch.int64)
        return ids, lengths

    # --- decoding -----------------------------------------------------------------------

    def decode(self, ids: Sequence[int] | torch.Tensor, *, strip_specials: bool = True) -> str:
        """The text of a sequence of ids (a list or a 1-D integer tensor).

        strip_specials: drop `<pad>`, `<sos>`, `<eos>`, `<blank>` (and any extra special)
            and write `<unk>` as the one character U+FFFD, so that a CER counts it as one
            wrong character; if False, every special is written as its name (`"<eos>"`).

        Raises: RangeError for an id outside `[0, vocab_size)`.
        """
        if isinstance(ids, torch.Tensor):
            check_shape(ids, "l", name="ids")
            check_dtype(ids, "int", name="ids")
            ids = ids.tolist()
        n_special, tokens = len(self.specials), self.tokens
        out = []
        for pos, i in enumerate(ids):
            i = self._check_id(i, where=f"decode: ids[{pos}]")
            if i >= n_special or not strip_specials:
                out.append(tokens[i])
            elif i == self.unk_id:
                out.append(_UNK_CHAR)
        return "".join(out)

    def decode_batch(self, ids: torch.Tensor | Sequence[Sequence[int]], lengths: torch.Tensor | None = None, *,
                     strip_specials: bool = True) -> list[str]:
        """Decode each row of `ids: [B, L]`; `lengths: [B]` (optional) keeps only the first
        `lengths[b]` ids of row b (padding is also dropped by `strip_specials`)."""
        if isinstance(ids, torch.Tensor):
            check_shape(ids, "b l", name="ids")
            check_dtype(ids, "int", name="ids")
            rows = ids.tolist()
        else:
            rows = [list(r) for r in ids]
        if lengths is not None:
            lengths_t = torch.as_tensor(lengths)
            check_shape(lengths_t, "b", name="lengths", b=len(rows))
            width = len(rows[0]) if rows else 0
            if lengths_t.numel() and (int(lengths_t.min()) < 0 or int(lengths_t.max()) > width):
                raise RangeError(f"decode_batch: lengths must lie in [0, {width}], got {lengths_t.tolist()}")
            rows = [r[:n] for r, n in zip(rows, lengths_t.tolist())]
        return [self.decode(r, strip_specials=strip_specials) for r in rows]

    # --- files --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """The vocabulary as a JSON-able dict (`format`, `version`, `specials`, `chars`, `use_unk`): what `save` writes."""
        return {"format": _FORMAT, "version": _VERSION, "specials": list(self.specials),
                "chars": list(self.chars), "use_unk": self.use_unk}

    def save(self, path: str | os.PathLike) -> Path:
        """Write the vocabulary as JSON, atomically (a temporary file renamed over `path`)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            tmp.write_text(json.dumps(self.to_dict(), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "CharTokenizer":
        """Read a vocabulary written by `save`.

        Raises: DataError naming the file if it is missing, not JSON, or not a tokenizer file.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"tokenizer file {path} does not exist") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DataError(f"tokenizer file {path} is not readable JSON ({e}); write it with "
                            "CharTokenizer.save") from None
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise DataError(f"tokenizer file {path}: expected format {_FORMAT!r}, got {got!r}; write it with "
                            "CharTokenizer.save")
        if data.get("version") != _VERSION:
            raise DataError(f"tokenizer file {path}: unsupported version {data.get('version')!r} "
                            f"(this funcml reads version {_VERSION})")
        chars, specials, use_unk = data.get("chars"), data.get("specials"), data.get("use_unk")
        if not isinstance(chars, list) or not isinstance(specials, list) or not isinstance(use_unk, bool):
            raise DataError(f"tokenizer file {path}: 'chars' and 'specials' must be lists and 'use_unk' a bool")
        try:
            return cls(tuple(chars), specials=tuple(specials), use_unk=use_unk)
        except (ConfigError, ShapeError) as e:
            raise DataError(f"tokenizer file {path}: {e}") from None

    def join(self, tokens: Sequence[str]) -> str:
        """The text of decoded token strings: characters are concatenated."""
        return "".join(tokens)


_WORD_FORMAT = "funcml.WordTokenizer"
# What `<unk>` decodes to under strip_specials: one word, so that a WER counts it as one error.
_UNK_WORD = _UNK_CHAR


@dataclasses.dataclass(frozen=True)
class WordTokenizer:
    """A frozen, hashable word vocabulary: the interface of `CharTokenizer`, one token per word.

    Arguments:
        words: the words, one token each, ids `len(specials) ..` in this order; a word is a
            non-empty string without whitespace and not a special name.
        specials: as in `CharTokenizer` (`<pad>` first, then `<unk>`, `<sos>`, `<eos>`, `<blank>`).
        use_unk: map a word outside the vocabulary to `<unk>`; if False, `encode` raises a
            DataError that names the word, its position and the text.
    """

    words: tuple[str, ...]
    specials: tuple[str, ...] = SPECIALS
    use_unk: bool = True
    unit = "word"  # class attribute (not a field): what one token is
    _index: dict = dataclasses.field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        words, specials = tuple(self.words), tuple(self.specials)
        object.__setattr__(self, "words", words)
        object.__setattr__(self, "specials", specials)
        bad = [w for w in words if not isinstance(w, str) or not w or any(c.isspace() for c in w)]
        require(not bad, self, f"every word must be a non-empty string without whitespace, got {bad[:5]!r}")
        dup = sorted({w for w in words if words.count(w) > 1})
        require(not dup, self, f"words has duplicates {dup[:10]!r}")
        # The specials are checked as in CharTokenizer (one definition of a valid special list).
        CharTokenizer((), specials=specials)
        clash = sorted(set(words) & set(specials))
        require(not clash, self, f"words {clash!r} are special token names; rename them in the texts")
        object.__setattr__(self, "_index", {tok: i for i, tok in enumerate(specials + words)})

    @classmethod
    def from_texts(cls, texts: Iterable[str], *, specials: Sequence[str] = SPECIALS,
                   use_unk: bool = True) -> "WordTokenizer":
        """The vocabulary of every whitespace-separated word in `texts`, sorted by code point."""
        if isinstance(texts, str):
            texts = [texts]
        seen: set[str] = set()
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise DataError(f"WordTokenizer.from_texts: texts[{i}] is {type(t).__name__}, expected str")
            seen.update(t.split())
        return cls(tuple(sorted(seen)), specials=tuple(specials), use_unk=use_unk)

    vocab_size = CharTokenizer.vocab_size
    __len__ = CharTokenizer.__len__
    pad_id = CharTokenizer.pad_id
    unk_id = CharTokenizer.unk_id
    sos_id = CharTokenizer.sos_id
    eos_id = CharTokenizer.eos_id
    blank_id = CharTokenizer.blank_id
    special_ids = CharTokenizer.special_ids
    token_to_id = CharTokenizer.token_to_id
    id_to_token = CharTokenizer.id_to_token
    _check_id = CharTokenizer._check_id
    encode_batch = CharTokenizer.encode_batch
    decode_batch = CharTokenizer.decode_batch
    save = CharTokenizer.save

    @property
    def tokens(self) -> tuple[str, ...]:
        """Every token by id: the specials, then the words."""
        return self.specials + self.words

    def encode(self, text: str, *, add_sos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of `text`, one per whitespace-separated word, optionally framed by `<sos>` / `<eos>`.

        Raises: DataError for a word outside the vocabulary when `use_unk=False`.
        """
        if not isinstance(text, str):
            raise DataError(f"encode: expected a str, got {type(text).__name__}")
        ids = []
        for pos, word in enumerate(text.split()):
            i = self._index.get(word) if word not in self.specials else None
            if i is None:
                if not self.use_unk:
                    raise DataError(f"encode: word {word!r} (word {pos} of text {text!r}) is not in the vocabulary "
                                    f"of {len(self.words)} words; rebuild the tokenizer from texts that contain it, "
                                    "or use use_unk=True to map it to <unk>")
                i = self.unk_id
            ids.append(i)
        if add_sos:
            ids.insert(0, self.sos_id)
        if add_eos:
            ids.append(self.eos_id)
        return ids

    def decode(self, ids: Sequence[int] | torch.Tensor, *, strip_specials: bool = True) -> str:
        """The words of `ids` joined by one space; `strip_specials` as in `CharTokenizer.decode`
        (`<unk>` becomes the one word U+FFFD, so that a WER counts it as one wrong word)."""
        if isinstance(ids, torch.Tensor):
            check_shape(ids, "l", name="ids")
            check_dtype(ids, "int", name="ids")
            ids = ids.tolist()
        n_special, tokens = len(self.specials), self.tokens
        out = []
        for pos, i in enumerate(ids):
            i = self._check_id(i, where=f"decode: ids[{pos}]")
            if i >= n_special or not strip_specials:
                out.append(tokens[i])
            elif i == self.unk_id:
                out.append(_UNK_WORD)
        return " ".join(out)

    def join(self, tokens: Sequence[str]) -> str:
        """The text of decoded token strings: words joined by one space."""
        return " ".join(tokens)

    def to_dict(self) -> dict:
        """The vocabulary as a JSON-able dict (`format`, `version`, `specials`, `words`, `use_unk`):
        what `save` writes."""
        return {"format": _WORD_FORMAT, "version": _VERSION, "specials": list(self.specials),
                "words": list(self.words), "use_unk": self.use_unk}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "WordTokenizer":
        """Read a word vocabulary written by `save` (DataError naming the file otherwise)."""
        tok = load_tokenizer(path)
        if not isinstance(tok, cls):
            raise DataError(f"tokenizer file {path} holds a {type(tok).__name__}, not a WordTokenizer")
        return tok


Tokenizer = CharTokenizer | WordTokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a `CharTokenizer` or a `WordTokenizer` from the file `save` wrote (chosen by its `format`).

    Raises: DataError naming the file if it is missing, not JSON, or not a tokenizer file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"tokenizer file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"tokenizer file {path} is not readable JSON ({e})") from None
    fmt = data.get("format") if isinstance(data, dict) else None
    if fmt == _FORMAT:
        return CharTokenizer.load(path)
    if fmt != _WORD_FORMAT:
        got = fmt if isinstance(data, dict) else type(data).__name__
        raise DataError(f"tokenizer file {path}: expected format {_FORMAT!r} or {_WORD_FORMAT!r}, got {got!r}; "
                        "write it with CharTokenizer.save or WordTokenizer.save")
    if data.get("version") != _VERSION:
        raise DataError(f"tokenizer file {path}: unsupported version {data.get('version')!r} "
                        f"(this funcml reads version {_VERSION})")
    words, specials, use_unk = data.get("words"), data.get("specials"), data.get("use_unk")
    if not isinstance(words, list) or not isinstance(specials, list) or not isinstance(use_unk, bool):
        raise DataError(f"tokenizer file {path}: 'words' and 'specials' must be lists and 'use_unk' a bool")
    try:
        return WordTokenizer(tuple(words), specials=tuple(specials), use_unk=use_unk)
    except (ConfigError, ShapeError) as e:
        raise DataError(f"tokenizer file {path}: {e}") from None
