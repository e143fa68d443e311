"""distil.tokenization against `transformers.BertTokenizer(vocab, do_lower_case=False)` and hand-worked examples.

Real text comes from the embedded default data: corpus lines, XNLI dev pairs and MultiNLI sentences.
"""

from __future__ import annotations

import hashlib
import re
import string

import pytest
import transformers

from distil import tokenization
from distil.data import embedded, nli

LANGUAGES = ("ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh")
MBERT_VOCAB_SHA256 = "fe0fda7c425b48c516fc8f160d594c8022a0808447475c1a7c6d6479763f310c"

TRICKY = [
    "",
    "   ",
    "Café naïve résumé Ångström Øre çà",
    "Cafe\u0301 with a combining acute",
    "tab\tand\nnewline\r\nand\x00null\x07bell\ufffdreplacement\x1fend",
    "zero\u200bwidth\u200djoiner \ufeffBOM soft\u00adhyphen \u3000ideographic space",
    "中文字符和日本語のテキスト、한국어 텍스트",
    "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "اللغة العربية جميلة، أليس كذلك؟ ١٢٣",
    "हिन्दी भाषा और اردو زبان",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flag 🇩🇪",
    "a" * 100,
    "a" * 101,
    "Donaudampfschifffahrtsgesellschaftskapitän" * 3,
    "x" * 250 + " short",
    "[MASK] [CLS][SEP] [PAD] [UNK] [unused1] [mask] [MASK]ed",
    "«quotes», „Anführungszeichen“, ¿qué? ¡sí! (1+2)=3 … — 100% $5.00",
    "#tag @user http://example.com/a?b=c&d=e user@example.org",
    "ǅ ﬁ Ⅻ ² ½ ℌ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𩾌",
    "Ελληνικά Русский Български Türkçe Tiếng Việt Kiswahili",
]


@pytest.fixture(scope="module")
def mbert():
    return tokenization.load_tokenizer(tokenization.default_vocab_path())


@pytest.fixture(scope="module")
def reference():
    return transformers.BertTokenizer(str(tokenization.default_vocab_path()), do_lower_case=False)


def first_lines(language: str, count: int = 200) -> list[str]:
    """The first `count` lines (at most 250) of the embedded corpus file of `language`."""
    text = embedded.embedded_corpus_file(language).read_text(encoding="utf-8")
    return text.split("\n")[:count]


def xnli_pairs(language: str, count: int = 30) -> list[tuple[str, str]]:
    """(premise, hypothesis) of the first `count` rows of the embedded XNLI dev sample, split by hand."""
    rows = (embedded.embedded_xnli_dir() / f"dev-{language}.tsv").read_text(encoding="utf-8").split("\n")
    return [tuple(row.split("\t")[:2]) for row in rows[:count]]


def python_wordpiece(text: str, vocab: dict[str, int]) -> list[int]:
    """BERT's basic + WordPiece tokenization written out for ASCII text: split on whitespace and ASCII punctuation,
    then greedy longest-match-first with '##' pieces; a word of > 100 chars or with no match is [UNK]."""
    words: list[str] = []
    for chunk in text.split():
        word = ""
        for char in chunk:
            if char in string.punctuation:
                words += [word, char] if word else [char]
                word = ""
            else:
                word += char
        if word:
            words.append(word)
    ids = [vocab["[CLS]"]]
    for word in words:
        pieces, start = [], 0
        while start < len(word) and len(word) <= 100:
            end = len(word)
            while end > start and (("##" if start else "") + word[start:end]) not in vocab:
                end -= 1
            if end == start:
                break
            pieces.append(vocab[("##" if start else "") + word[start:end]])
            start = end
        ids += pieces if start == len(word) and pieces else [vocab["[UNK]"]]
    return ids + [vocab["[SEP]"]]


def test_shipped_vocab_is_mbert(mbert):
    # The sha256 of multi_cased_L-12_H-768_A-12's vocab.txt, recorded from the copy the embedded README names.
    shipped = tokenization.default_vocab_path().read_bytes()
    assert hashlib.sha256(shipped).hexdigest() == MBERT_VOCAB_SHA256
    assert len(shipped) == 995_526 and shipped.count(b"\n") == 119_547 and shipped.endswith(b"\n##\xf0\xa9\xbe\x8c\n")
    assert mbert.get_vocab_size() == 119_547
    assert tokenization.special_token_ids(mbert) == tokenization.SpecialTokenIds(
        pad=0, unk=100, cls=101, sep=102, mask=103
    )
    assert mbert.id_to_token(1) == "[unused1]" and mbert.id_to_token(104) == "<S>"
    assert mbert.id_to_token(119_546) == "##𩾌"


@pytest.mark.parametrize("language", LANGUAGES)
def test_corpus_ids_match_transformers(mbert, reference, language):
    lines = first_lines(language)
    expected = reference(lines)
    encodings = mbert.encode_batch(lines)
    assert [e.ids for e in encodings] == expected["input_ids"]
    assert [e.type_ids for e in encodings] == expected["token_type_ids"]
    unk_share = sum(e.ids.count(100) for e in encodings) / sum(len(e.ids) for e in encodings)
    # mBERT covers all 15 XNLI languages; the worst is English PUD at 1.1% (’ “ ” — are not in the vocab).
    assert unk_share < 0.02
    batch = tokenization.encode_batch_pairs(mbert, lines, None, max_length=512)
    truncated = reference(lines, truncation=True, max_length=512)
    assert [ids for ids, _ in batch] == truncated["input_ids"]


def test_ascii_lines_match_python_wordpiece(mbert):
    vocab = mbert.get_vocab()
    # The 250 embedded English corpus lines hold ~200 ASCII ones; MultiNLI sentences bring real ASCII text to > 300.
    nli_examples = nli.read_multinli_jsonl(embedded.embedded_nli_train())[:150]
    sentences = [text for example in nli_examples for text in (example.premise, example.hypothesis)]
    lines = [line for line in first_lines("en", 250) + sentences if line.isascii() and line.isprintable()]
    assert len(lines) > 300
    for line in lines:
        assert mbert.encode(line).ids == python_wordpiece(line, vocab), line


def test_tricky_strings_match_transformers(mbert, reference):
    expected = reference(TRICKY)["input_ids"]
    assert [mbert.encode(text).ids for text in TRICKY] == expected
    for text, ids in zip(TRICKY, expected):
        assert tokenization.encode_pair(mbert, text, max_length=1024) == (ids, [0] * len(ids)), text


def test_hand_worked_examples(mbert):
    vocab = mbert.get_vocab()
    assert mbert.encode("").ids == [101, 102]
    assert mbert.encode("a" * 101).ids == [101, 100, 102]  # longer than max_input_chars_per_word
    assert mbert.encode("a" * 100).ids != [101, 100, 102]
    assert mbert.encode("[MASK]").ids == [101, 103, 102]  # an added token, not '[', 'MA', ...
    assert mbert.encode("a\x00b\x07").ids == mbert.encode("ab").ids  # clean_text drops control characters
    assert mbert.encode("中文").ids == [101, vocab["中"], vocab["文"], 102]  # one token per CJK ideograph
    assert mbert.encode("Café").ids != mbert.encode("Cafe").ids  # accents kept
    assert mbert.encode("Paris").ids != mbert.encode("paris").ids  # case kept
    ids, type_ids = tokenization.encode_pair(mbert, "Hello", "world", max_length=64)
    assert ids == [101, vocab["Hello"], 102, vocab["world"], 102] and type_ids == [0, 0, 0, 1, 1]
    assert mbert.decode(mbert.encode("Donaudampfschiff fährt").ids) == "Donaudampfschiff fährt"


@pytest.mark.parametrize("language", ("en", "de", "zh", "ar", "th"))
def test_pair_truncation_matches_transformers(mbert, reference, language):
    pairs = xnli_pairs(language)
    lines = first_lines(language, 10)
    pairs += [(lines[0] + " " + lines[1], "Short."), ("Short.", lines[2] + " " + lines[3])]
    pairs += [(b, a) for a, b in pairs]  # premise longer and hypothesis longer
    premises, hypotheses = [p for p, _ in pairs], [h for _, h in pairs]
    for max_length in (3, 5, 8, 13, 24, 40, 128):
        expected = reference(premises, hypotheses, truncation="longest_first", max_length=max_length)
        got = [tokenization.encode_pair(mbert, p, h, max_length=max_length) for p, h in pairs]
        assert [ids for ids, _ in got] == expected["input_ids"]
        assert [types for _, types in got] == expected["token_type_ids"]
        assert tokenization.encode_batch_pairs(mbert, premises, hypotheses, max_length=max_length) == got
        assert max(len(ids) for ids, _ in got) <= max_length


def test_max_input_chars_per_word(mbert, reference, tmp_path):
    """transformers (and so the default) turns a 150-character word into [UNK]; Google's tokenizer (200) did not."""
    thai_word = ("ภาษาไทยไม่มีช่องว่างระหว่างคำ" * 6)[:150]  # Thai writes no spaces between words
    assert mbert.encode(thai_word).ids == reference(thai_word)["input_ids"] == [101, 100, 102]
    google = tokenization.load_tokenizer(tokenization.default_vocab_path(), max_input_chars_per_word=200)
    google_ids = google.encode(thai_word).ids
    assert 100 not in google_ids and len(google_ids) > 3
    assert google.encode("a" * 201).ids == [101, 100, 102]
    # Saved and reloaded, a tokenizer.json keeps its own value unless the caller overrides it.
    tokenization.save_tokenizer(google, tmp_path / "google")
    assert tokenization.load_tokenizer(tmp_path / "google").encode(thai_word).ids == google_ids
    reloaded = tokenization.load_tokenizer(tmp_path / "google", max_input_chars_per_word=100)
    assert reloaded.encode(thai_word).ids == [101, 100, 102]
    with pytest.raises(ValueError, match="max_input_chars_per_word must be an int >= 1, got 0"):
        tokenization.load_tokenizer(tokenization.default_vocab_path(), max_input_chars_per_word=0)


def test_encoding_leaves_the_callers_tokenizer_alone(mbert):
    caller = tokenization.load_tokenizer(tokenization.default_vocab_path())
    caller.enable_padding(pad_id=0, pad_token="[PAD]", length=20)
    assert tokenization.encode_pair(caller, "one two three four", "five six", max_length=6) == (
        tokenization.encode_pair(mbert, "one two three four", "five six", max_length=6)
    )
    assert len(tokenization.encode_pair(caller, "one", max_length=6)[0]) == 3  # no padding in our results
    assert caller.truncation is None and caller.padding["length"] == 20
    caller.add_tokens(["<new-token>"])  # an added token outside the vocab keeps its id in the private copy
    ids, _ = tokenization.encode_pair(caller, "x <new-token> y", max_length=16)
    assert ids[2] == 119_547 and ids == [i for i in caller.encode("x <new-token> y").ids if i != 0]
    assert len(caller.encode("one").ids) == 20
    with pytest.raises(ValueError, match="max_length"):
        tokenization.encode_pair(mbert, "a", "b", max_length=2)  # cannot hold [CLS] [SEP] [SEP]
    with pytest.raises(ValueError, match="2 premises but 1 hypotheses"):
        tokenization.encode_batch_pairs(mbert, ["a", "b"], ["c"], max_length=8)


def test_load_from_tokenizer_json_and_folder(mbert, tmp_path):
    lines = first_lines("fr", 50) + TRICKY
    expected = [e.ids for e in mbert.encode_batch(lines)]
    mbert.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "vocab_only").mkdir()
    (tmp_path / "vocab_only" / "vocab.txt").write_bytes(tokenization.default_vocab_path().read_bytes())
    for source in (tmp_path / "tokenizer.json", tmp_path, tmp_path / "vocab_only"):
        loaded = tokenization.load_tokenizer(source)
        assert [e.ids for e in loaded.encode_batch(lines)] == expected, source


def test_save_tokenizer_loads_in_transformers(mbert, tmp_path):
    tokenization.save_tokenizer(mbert, tmp_path / "mbert", model_max_length=128)
    folder = tmp_path / "mbert"
    assert sorted(p.name for p in folder.iterdir()) == [
        "special_tokens_map.json", "tokenizer.json", "tokenizer_config.json", "vocab.txt"
    ]  # no temporary files left behind
    assert (folder / "vocab.txt").read_bytes() == tokenization.default_vocab_path().read_bytes()
    auto = transformers.AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    assert isinstance(auto, transformers.BertTokenizer) and auto.model_max_length == 128
    pairs = xnli_pairs("ru", 40) + [(text, "[MASK] x") for text in TRICKY]
    premises, hypotheses = [p for p, _ in pairs], [h for _, h in pairs]
    expected = auto(premises, hypotheses, truncation="longest_first", max_length=32)
    got = tokenization.encode_batch_pairs(mbert, premises, hypotheses, max_length=32)
    assert [ids for ids, _ in got] == expected["input_ids"]
    assert [types for _, types in got] == expected["token_type_ids"]


def test_train_wordpiece_hand_worked(tmp_path):
    corpus = tmp_path / "tiny.txt"
    corpus.write_text("abc abd ab\nzz\n", encoding="utf-8")
    trained = tokenization.train_wordpiece([corpus], 200, min_frequency=2, limit_alphabet=3)
    vocab = trained.get_vocab()
    tokens = sorted(vocab, key=vocab.get)
    # alphabet = the 3 most frequent characters (a:3, b:3, z:2; c and d dropped) in code point order, then '##'
    # pieces for those seen inside a word, then the one merge with count >= 2: a + ##b (3 times); z ##z is once.
    assert tokens == [*tokenization.MBERT_RESERVED_TOKENS, "a", "b", "z", "##b", "##z", "ab"]
    assert trained.encode("ab zz abc").ids == [101, 109, 106, 108, 100, 102]  # 'abc' has no '##c' -> [UNK]
    short_words = tokenization.train_wordpiece([corpus], 200, min_frequency=2, limit_alphabet=3,
                                               max_input_chars_per_word=1)
    assert short_words.get_vocab() == vocab  # the same merges; the limit applies when encoding
    assert short_words.encode("ab zz a").ids == [101, 100, 100, 104, 102]  # words over 1 character -> [UNK]


def test_train_wordpiece_on_corpus(tmp_path):
    files = [embedded.embedded_corpus_file(language) for language in ("en", "de", "fr")]
    trained = tokenization.train_wordpiece(files, 2000)
    again = tokenization.train_wordpiece([str(f) for f in files], 2000)
    assert trained.get_vocab() == again.get_vocab()  # the plain trainer differs from run to run
    assert trained.get_vocab_size() == 2000
    assert [trained.id_to_token(i) for i in (0, 1, 99, 100, 101, 102, 103)] == [
        "[PAD]", "[unused1]", "[unused99]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
    ]
    lines = [line for f in files for line in f.read_text(encoding="utf-8").split("\n") if line]
    encodings = trained.encode_batch(lines)
    tokens = sum(len(e.ids) - 2 for e in encodings)
    unk_share = sum(e.ids.count(100) for e in encodings) / tokens
    assert unk_share < 0.005, unk_share
    assert tokens / sum(len(line.split()) for line in lines) < 3.0  # real subwords, not single characters

    tokenization.save_tokenizer(trained, tmp_path / "trained")
    reference = transformers.BertTokenizer(str(tmp_path / "trained" / "vocab.txt"), do_lower_case=False)
    assert reference(lines)["input_ids"] == [e.ids for e in encodings]
    reloaded = tokenization.load_tokenizer(tmp_path / "trained")
    assert [e.ids for e in reloaded.encode_batch(lines)] == [e.ids for e in encodings]


def test_shipped_small_vocab_is_the_corpus_wordpiece():
    """wordpiece-8k/vocab.txt is exactly what its README says: train_wordpiece on the 15 embedded corpus files."""
    trained = tokenization.train_wordpiece(sorted(embedded.embedded_corpus_dir().glob("*.txt")), 8000,
                                           limit_alphabet=2000)
    tokens = sorted(trained.get_vocab(), key=trained.get_vocab().get)
    assert embedded.embedded_wordpiece_vocab().read_bytes() == "".join(t + "\n" for t in tokens).encode("utf-8")
    # Every corpus character is covered: the only [UNK]s are words longer than max_input_chars_per_word (100),
    # unsegmented Thai runs, and they go once the limit is lifted.
    lines = [line for f in sorted(embedded.embedded_corpus_dir().glob("*.txt"))
             for line in f.read_text(encoding="utf-8").split("\n") if line]
    unlimited = tokenization.load_tokenizer(embedded.embedded_wordpiece_vocab(), max_input_chars_per_word=1000)
    assert sum(e.ids.count(100) for e in unlimited.encode_batch(lines)) == 0


def test_bad_inputs_name_the_file_and_token(tmp_path):
    missing = tmp_path / "nowhere" / "vocab.txt"
    with pytest.raises(tokenization.TokenizerError, match=re.escape(str(missing))):
        tokenization.load_tokenizer(missing)
    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(tokenization.TokenizerError, match=f"{re.escape(str(empty))}.*empty"):
        tokenization.load_tokenizer(empty)
    no_mask = tmp_path / "no_mask.txt"
    no_mask.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\nhello\n", encoding="utf-8")
    with pytest.raises(tokenization.TokenizerError, match=re.escape(str(no_mask)) + r".*\[MASK\]") as error:
        tokenization.load_tokenizer(no_mask)
    assert "[PAD]" not in str(error.value).split("expected")[0]  # only the missing token is named
    repeated = tmp_path / "repeated.txt"
    repeated.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhi\nhi\n", encoding="utf-8")
    with pytest.raises(tokenization.TokenizerError, match=re.escape(f"{repeated}:7") + ".*'hi' repeats line 6"):
        tokenization.load_tokenizer(repeated)
    no_files = re.escape(str(tmp_path)) + ".*neither tokenizer.json nor vocab.txt"
    with pytest.raises(tokenization.TokenizerError, match=no_files):
        tokenization.load_tokenizer(tmp_path)
    bad_json = tmp_path / "tokenizer.json"
    bad_json.write_text("{not json", encoding="utf-8")
    with pytest.raises(tokenization.TokenizerError, match=re.escape(str(bad_json))):
        tokenization.load_tokenizer(bad_json)
    with pytest.raises(tokenization.TokenizerError, match="missing.txt"):
        tokenization.train_wordpiece([tmp_path / "missing.txt"], 500)
