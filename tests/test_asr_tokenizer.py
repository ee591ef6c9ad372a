"""funcml.asr.tokenizer: a character vocabulary with fixed special ids, batch encoding, files."""

from __future__ import annotations

import json

import pytest
import torch

from funcml.asr.tokenizer import BLANK_ID, EOS_ID, PAD_ID, SOS_ID, UNK_ID, CharTokenizer, WordTokenizer, load_tokenizer
from funcml.errors import ConfigError, DataError, RangeError

TEXTS = ["hello world", "good day"]


@pytest.fixture
def tok() -> CharTokenizer:
    return CharTokenizer.from_texts(TEXTS)


def test_special_ids_are_fixed_and_first(tok):
    assert (tok.pad_id, tok.unk_id, tok.sos_id, tok.eos_id, tok.blank_id) == (0, 1, 2, 3, 4)
    assert (PAD_ID, UNK_ID, SOS_ID, EOS_ID, BLANK_ID) == (0, 1, 2, 3, 4)
    assert [tok.id_to_token(i) for i in range(5)] == ["<pad>", "<unk>", "<sos>", "<eos>", "<blank>"]


def test_from_texts_sorts_characters_by_code_point_after_the_specials(tok):
    # " " (U+0020) sorts first; every distinct character once.
    assert tok.chars == (" ", "a", "d", "e", "g", "h", "l", "o", "r", "w", "y")
    assert tok.vocab_size == 5 + 11 == len(tok)
    assert tok.token_to_id(" ") == 5 and tok.token_to_id("y") == 15 and tok.id_to_token(15) == "y"


def test_space_is_a_token(tok):
    assert tok.encode("a d") == [tok.token_to_id("a"), tok.token_to_id(" "), tok.token_to_id("d")]


def test_round_trip_including_spaces(tok):
    for text in [*TEXTS, "", " ", "  hello  world ", "odd"]:
        assert tok.decode(tok.encode(text)) == text


def test_encode_adds_sos_and_eos(tok):
    a = tok.token_to_id("a")
    assert tok.encode("a", add_eos=True) == [a, 3]
    assert tok.encode("a", add_sos=True, add_eos=True) == [2, a, 3]


def test_text_is_never_parsed_for_special_names():
    tok = CharTokenizer.from_texts(["<eos>"])
    assert tok.encode("<eos>") == [tok.token_to_id(c) for c in "<eos>"]
    assert len(tok.encode("<eos>")) == 5


def test_encode_batch_pads_with_pad_id(tok):
    ids, lengths = tok.encode_batch(["do", "a", ""])
    d, o, a = (tok.token_to_id(c) for c in "doa")
    assert ids.dtype == torch.int64 and lengths.dtype == torch.int64
    assert torch.equal(ids, torch.tensor([[d, o], [a, 0], [0, 0]]))
    assert torch.equal(lengths, torch.tensor([2, 1, 0]))


def test_encode_batch_with_eos_counts_it_in_lengths(tok):
    ids, lengths = tok.encode_batch(["do", "a"], add_eos=True)
    assert ids.shape == (2, 3) and lengths.tolist() == [3, 2]
    assert ids[0, 2] == 3 and ids[1, 1] == 3 and ids[1, 2] == 0


def test_encode_batch_of_no_texts_is_empty(tok):
    ids, lengths = tok.encode_batch([])
    assert ids.shape == (0, 0) and lengths.shape == (0,)


def test_decode_strips_specials_and_marks_unk(tok):
    a, d = tok.token_to_id("a"), tok.token_to_id("d")
    assert tok.decode([2, a, 4, d, 1, 3, 0, 0]) == "ad\ufffd"


def test_decode_keeps_special_names_when_asked(tok):
    a = tok.token_to_id("a")
    assert tok.decode([2, a, 3, 0], strip_specials=False) == "<sos>a<eos><pad>"


def test_decode_accepts_a_tensor(tok):
    assert tok.decode(torch.tensor(tok.encode("day"))) == "day"


def test_decode_rejects_an_id_outside_the_vocabulary(tok):
    with pytest.raises(RangeError, match=r"ids\[1\].*16.*\[0, 16\)"):
        tok.decode([5, 16])


def test_decode_batch_cuts_rows_at_lengths(tok):
    ids, lengths = tok.encode_batch(["good", "day", "a"])
    assert tok.decode_batch(ids, lengths) == ["good", "day", "a"]
    assert tok.decode_batch(ids, torch.tensor([2, 3, 0])) == ["go", "day", ""]
    assert tok.decode_batch(ids) == ["good", "day", "a"]  # padding stripped as a special


def test_unknown_character_maps_to_unk_by_default(tok):
    assert tok.encode("aZa") == [tok.token_to_id("a"), 1, tok.token_to_id("a")]


def test_unknown_character_error_names_character_position_and_text():
    tok = CharTokenizer.from_texts(TEXTS, use_unk=False)
    with pytest.raises(DataError, match=r"'Z'.*position 2.*'heZlo'"):
        tok.encode("heZlo")


def test_save_load_round_trip(tmp_path, tok):
    path = tok.save(tmp_path / "sub" / "vocab.json")
    loaded = CharTokenizer.load(path)
    assert loaded == tok and hash(loaded) == hash(tok)
    assert loaded.encode("good day") == tok.encode("good day")
    assert not list(path.parent.glob(".*tmp*"))  # no temporary file left behind


def test_save_load_keeps_use_unk_and_non_ascii(tmp_path):
    tok = CharTokenizer.from_texts(["naïve 日本"], use_unk=False)
    loaded = CharTokenizer.load(tok.save(tmp_path / "v.json"))
    assert loaded.use_unk is False and loaded.decode(loaded.encode("naïve 日本")) == "naïve 日本"


def test_load_corrupt_file_names_it(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text('{"format": "funcml.CharTokenizer", "chars": [')
    with pytest.raises(DataError, match="vocab.json.*not readable JSON"):
        CharTokenizer.load(path)


def test_load_wrong_format_names_it(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"lr": 0.1}))
    with pytest.raises(DataError, match="config.json.*expected format 'funcml.CharTokenizer'"):
        CharTokenizer.load(path)


def test_load_missing_file_names_it(tmp_path):
    with pytest.raises(DataError, match="nope.json.*does not exist"):
        CharTokenizer.load(tmp_path / "nope.json")


def test_load_inconsistent_vocabulary_is_a_data_error(tmp_path, tok):
    data = tok.to_dict()
    data["chars"] = ["a", "a"]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="dup.json.*duplicates"):
        CharTokenizer.load(path)


def test_failed_save_keeps_the_existing_file(tmp_path, tok, monkeypatch):
    path = tok.save(tmp_path / "vocab.json")
    before = path.read_text()

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("funcml.asr.tokenizer.os.replace", boom)
    with pytest.raises(OSError):
        CharTokenizer.from_texts(["xyz"]).save(path)
    assert path.read_text() == before
    assert not list(tmp_path.glob(".*tmp*"))


def test_token_to_id_of_unknown_token_is_a_range_error(tok):
    with pytest.raises(RangeError, match="'Z'"):
        tok.token_to_id("Z")


def test_constructor_rejects_bad_vocabularies():
    with pytest.raises(ConfigError, match="one character"):
        CharTokenizer(("ab",))
    with pytest.raises(ConfigError, match="duplicates"):
        CharTokenizer(("a", "a"))
    with pytest.raises(ConfigError, match="start with '<pad>'"):
        CharTokenizer(("a",), specials=("<unk>", "<pad>", "<sos>", "<eos>", "<blank>"))
    with pytest.raises(ConfigError, match="lack.*<blank>"):
        CharTokenizer(("a",), specials=("<pad>", "<unk>", "<sos>", "<eos>"))


def test_extra_specials_take_the_next_ids():
    tok = CharTokenizer(("a",), specials=("<pad>", "<unk>", "<sos>", "<eos>", "<blank>", "<mask>"))
    assert tok.token_to_id("<mask>") == 5 and tok.token_to_id("a") == 6
    assert tok.decode([6, 5, 6]) == "aa"


# ------------------------------------------------------------------------------ words

WORD_TEXTS = ["three one four", "one five nine", "two"]


@pytest.fixture
def wtok() -> WordTokenizer:
    return WordTokenizer.from_texts(WORD_TEXTS, use_unk=False)


def test_word_vocabulary_is_sorted_words_after_the_specials(wtok):
    assert wtok.words == ("five", "four", "nine", "one", "three", "two")
    assert wtok.vocab_size == 5 + 6 == len(wtok)
    assert wtok.tokens[:5] == ("<pad>", "<unk>", "<sos>", "<eos>", "<blank>")
    assert wtok.token_to_id("five") == 5 and wtok.id_to_token(10) == "two"
    assert (wtok.pad_id, wtok.unk_id, wtok.sos_id, wtok.eos_id, wtok.blank_id) == (0, 1, 2, 3, 4)


def test_word_encode_gives_one_id_per_word_and_decode_joins_with_one_space(wtok):
    assert wtok.encode("one nine") == [8, 7]
    assert wtok.decode([8, 7]) == "one nine"
    for text in [*WORD_TEXTS, "", "  two   one "]:
        assert wtok.decode(wtok.encode(text)) == " ".join(text.split())
    assert wtok.encode("two", add_sos=True, add_eos=True) == [2, 10, 3]
    assert wtok.decode([2, 10, 3, 0]) == "two" and wtok.decode([2, 10, 3], strip_specials=False) == "<sos> two <eos>"


def test_word_batch_encode_and_decode_round_trip(wtok):
    ids, lengths = wtok.encode_batch(["one", "three one four"])
    assert ids.shape == (2, 3) and lengths.tolist() == [1, 3] and ids[0, 1:].tolist() == [0, 0]
    assert wtok.decode_batch(ids, lengths) == ["one", "three one four"]


def test_unknown_word_is_an_error_naming_it_or_unk_when_allowed(wtok):
    with pytest.raises(DataError, match="word 'seven' .*word 1 of text 'one seven'"):
        wtok.encode("one seven")
    lenient = WordTokenizer(wtok.words, use_unk=True)
    assert lenient.encode("one seven") == [8, UNK_ID]
    assert lenient.decode([8, UNK_ID]) == "one \ufffd"  # one wrong word for a WER
    assert lenient.encode("<eos>") == [UNK_ID]  # text is never parsed for special names


def test_word_tokenizer_rejects_bad_vocabularies():
    with pytest.raises(ConfigError, match="whitespace"):
        WordTokenizer(("a b",))
    with pytest.raises(ConfigError, match="duplicates"):
        WordTokenizer(("a", "a"))
    with pytest.raises(ConfigError, match="special token names"):
        WordTokenizer(("<eos>", "a"))


def test_save_and_load_either_kind_by_its_format(wtok, tmp_path):
    path = wtok.save(tmp_path / "words.json")
    back = load_tokenizer(path)
    assert isinstance(back, WordTokenizer) and back == wtok and WordTokenizer.load(path) == wtok
    chars = CharTokenizer.from_texts(TEXTS)
    assert load_tokenizer(chars.save(tmp_path / "chars.json")) == chars
    with pytest.raises(DataError, match="not a WordTokenizer"):
        WordTokenizer.load(tmp_path / "chars.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "something"}))
    with pytest.raises(DataError, match="expected format"):
        load_tokenizer(tmp_path / "other.json")


def test_join_matches_decode_for_both_kinds(wtok):
    chars = CharTokenizer.from_texts(TEXTS)
    ids = chars.encode("hello world")
    assert chars.join([chars.id_to_token(i) for i in ids]) == chars.decode(ids)
    wids = wtok.encode("three one")
    assert wtok.join([wtok.id_to_token(i) for i in wids]) == wtok.decode(wids) == "three one"
