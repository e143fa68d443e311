"""Vocabulary trimming (`distil trim`, `distil.trim`, `distilmbert:languages=`): the embedded corpus tokenizes to the
same pieces under new ids, the trimmed model equals the original on kept ids (distil and transformers), characters
the trimmed vocabulary lost become [UNK] as mBERT's unknown characters do, the [UNK] report agrees with a word-level
recount, the trimmed KL is the full KL restricted and renormalised (NumPy), a trimmed distillation runs end to end,
and bad input is one line with exit 2."""

from __future__ import annotations

import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from distil import cli, hf, losses, trim
from distil.config import load_config
from distil.data.binarize import prepare
from distil.data.embedded import embedded_corpus_dir, embedded_corpus_file, embedded_wordpiece_vocab
from distil.models import ModelConfig, create_model
from distil.models.extract import init_student_from_teacher
from distil.tokenization import default_vocab_path, load_tokenizer, save_tokenizer

LANGUAGES = ("en", "fr", "ar", "hi", "zh")  # four scripts and CJK
LENGTH = 64


def corpus_lines(language: str) -> list[str]:
    return [line.strip() for line in embedded_corpus_file(language).read_text("utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="module")
def mbert():
    return load_tokenizer(default_vocab_path())


@pytest.fixture(scope="module")
def folders(tmp_path_factory, mbert):
    """A small random BertForMaskedLM written by transformers with mBERT's real vocabulary (and a random MLM bias, so
    its rows matter), and the folder `distil trim` makes of it for LANGUAGES of the embedded corpus."""
    root = tmp_path_factory.mktemp("trim")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=mbert.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=LENGTH)
    model = transformers.BertForMaskedLM(config)
    with torch.no_grad():
        model.cls.predictions.bias.normal_()
    model.save_pretrained(root / "teacher")
    save_tokenizer(mbert, root / "teacher", model_max_length=LENGTH)
    assert cli.main(["trim", str(root / "teacher"), str(root / "trimmed"), "--corpus", str(embedded_corpus_dir()),
                     "--languages", ",".join(LANGUAGES)]) == 0
    return root


@pytest.fixture(scope="module")
def torch_models(folders):
    return tuple(transformers.AutoModelForMaskedLM.from_pretrained(folders / name).eval()
                 for name in ("teacher", "trimmed"))


@pytest.fixture(scope="module")
def trimmed_tokenizer(folders):
    return load_tokenizer(folders / "trimmed")


def test_the_corpus_tokenizes_to_the_same_pieces_under_new_ids(folders, mbert, trimmed_tokenizer):
    kept_ids = trim.read_kept_ids(folders / "trimmed")
    old_to_new = np.full(mbert.get_vocab_size(), -1)
    old_to_new[kept_ids] = np.arange(len(kept_ids))
    tokens = (folders / "teacher" / "vocab.txt").read_text("utf-8").split("\n")[:-1]
    assert (folders / "trimmed" / "vocab.txt").read_text("utf-8").split("\n")[:-1] == [tokens[i] for i in kept_ids]
    assert [trimmed_tokenizer.token_to_id(t) for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2, 3, 4]
    assert len(kept_ids) < mbert.get_vocab_size() // 3

    for language in LANGUAGES:
        lines = corpus_lines(language)
        original = mbert.encode_batch(lines)
        trimmed = trimmed_tokenizer.encode_batch(lines)
        for line, before, after in zip(lines, original, trimmed):
            assert after.tokens == before.tokens, line
            assert after.ids == old_to_new[before.ids].tolist(), line
    report = json.loads((folders / "trimmed" / trim.KEPT_IDS_FILE).read_text("utf-8"))["languages"]
    assert list(report) == list(LANGUAGES)
    assert all(row["became_unk"] == 0 and row["resegmented"] == 0 and row["tokens"] > 5000 for row in report.values())


def _batch(tokenizer, lines_per_language=3):
    lines = [line for language in LANGUAGES for line in corpus_lines(language)[:lines_per_language]]
    encodings = tokenizer.encode_batch(lines)
    ids = np.zeros((len(lines), LENGTH), np.int32)
    mask = np.zeros_like(ids)
    for row, encoding in enumerate(encodings):
        length = min(len(encoding.ids), LENGTH)
        ids[row, :length] = encoding.ids[:length]
        mask[row, :length] = 1
    return ids, mask


def test_hidden_states_and_logits_equal_the_originals_on_kept_ids(folders, mbert, trimmed_tokenizer, torch_models):
    kept_ids = trim.read_kept_ids(folders / "trimmed")
    original, trimmed = torch_models
    assert trimmed.config.vocab_size == len(kept_ids)
    old_ids, mask = _batch(mbert)
    new_ids, new_mask = _batch(trimmed_tokenizer)
    np.testing.assert_array_equal(mask, new_mask)
    with torch.no_grad():
        before, after = (model(input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask),
                               output_hidden_states=True) for model, ids in ((original, old_ids), (trimmed, new_ids)))
    for hidden_before, hidden_after in zip(before.hidden_states, after.hidden_states, strict=True):
        assert (hidden_before - hidden_after).abs().max() <= 1e-5
    logits_before = before.logits.numpy()[..., kept_ids]
    assert np.abs(logits_before - after.logits.numpy()).max() <= 1e-5
    assert np.abs(logits_before).max() > 1.0  # the random MLM bias makes the rows distinguishable
    # distil reads the folder as the same model: its rows are the original's rows kept_ids.
    distil_original, distil_trimmed = hf.load_pretrained(folders / "teacher"), hf.load_pretrained(folders / "trimmed")
    assert distil_trimmed.config == distil_original.config.replace(vocab_size=len(kept_ids))
    for rows in (lambda model: model.encoder.embeddings.word_embeddings.embedding, lambda model: model.mlm_head.bias):
        np.testing.assert_array_equal(np.asarray(rows(distil_original)[...])[kept_ids],
                                      np.asarray(rows(distil_trimmed)[...]))


def test_fill_mask_works_offline_on_the_trimmed_folder(folders, torch_models):
    kept_ids = trim.read_kept_ids(folders / "trimmed")
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(folders / "trimmed")
    words = corpus_lines("fr")[0].split()[:12]
    sentence = " ".join(words[:3] + ["[MASK]"] + words[4:]) + " " + corpus_lines("zh")[0][:12]  # text of the corpus
    with torch.no_grad():
        logits = torch_models[1](**hf_tokenizer(sentence, return_tensors="pt")).logits[0].numpy()
    fill_mask = transformers.pipeline("fill-mask", model=str(folders / "trimmed"), tokenizer=str(folders / "trimmed"),
                                      top_k=5, device="cpu")
    position = hf_tokenizer(sentence)["input_ids"].index(hf_tokenizer.mask_token_id)
    expected = np.argsort(-logits[position])[:5]
    results = fill_mask(sentence)
    assert [row["token"] for row in results] == expected.tolist()
    vocab = (folders / "teacher" / "vocab.txt").read_text("utf-8").split("\n")
    assert [row["token_str"] for row in results] == [vocab[kept_ids[i]] for i in expected]
    probs = np.exp(logits[position] - logits[position].max())
    np.testing.assert_allclose([row["score"] for row in results], (probs / probs.sum())[expected], rtol=1e-4)


def test_characters_the_trimmed_vocabulary_lost_become_unk_like_mbert_unknown_characters(mbert, trimmed_tokenizer):
    corpus_text = "".join("".join(corpus_lines(language)) for language in LANGUAGES)
    thai, greek = "สวัสดี", "Ελλάδα"
    assert not set(thai + greek) & set(corpus_text)  # scripts none of LANGUAGES' corpus uses
    assert "[UNK]" not in mbert.encode(f"{thai} {greek}").tokens  # mBERT itself knows them
    # Plain mBERT on characters outside its vocabulary (Egyptian hieroglyphs): one [UNK] per word.
    unknown_to_mbert = mbert.encode("the 𓀀𓀁 of abc𓀀").tokens
    assert unknown_to_mbert == ["[CLS]", "the", "[UNK]", "of", "[UNK]", "[SEP]"]
    assert trimmed_tokenizer.encode(f"the {thai} of abc{greek}").tokens == unknown_to_mbert


def test_single_characters_keep_unseen_words_of_kept_scripts_tokenizable(mbert):
    counts = trim.corpus_token_counts(embedded_corpus_dir(), mbert, languages=["en"])
    english, vocab = set("".join(corpus_lines("en"))), mbert.get_vocab()
    unseen_latin = [token for token in vocab if len(token) == 1 and token.isalpha() and token not in english
                    and trim.character_script(token) == "LATIN" and f"##{token}" in vocab][:3]
    word = "".join(unseen_latin)
    assert len(word) == 3 and "[UNK]" not in mbert.encode(word).tokens
    with_chars = trim.select_vocabulary(mbert, counts.total)
    without_chars = trim.select_vocabulary(mbert, counts.total, single_chars=False)
    assert with_chars.scripts == ("LATIN",) and with_chars.kept_by_reason["single_chars"] > 300
    assert without_chars.kept_by_reason["single_chars"] == 0
    assert "[UNK]" not in with_chars.tokenizer.encode(f"the {word}").tokens
    assert without_chars.tokenizer.encode(f"the {word}").tokens == ["[CLS]", "the", "[UNK]", "[SEP]"]
    # No script of another language is kept: a Cyrillic letter is [UNK] either way.
    assert with_chars.tokenizer.encode("Ж").tokens == ["[CLS]", "[UNK]", "[SEP]"]


def test_min_count_and_keep_vocab_and_the_unk_report_against_a_word_level_recount(mbert, tmp_path):
    (tmp_path / "keep.txt").write_text("[unused1]\n\nZürich\n", encoding="utf-8")
    keep = trim.read_keep_vocab(tmp_path / "keep.txt", mbert)
    counts = trim.corpus_token_counts(embedded_corpus_dir(), mbert, languages=["en", "hi"])
    vocabulary = trim.select_vocabulary(mbert, counts.total, min_count=3, keep_tokens=keep)
    kept = set(vocabulary.kept_ids.tolist())
    assert {mbert.token_to_id("[unused1]"), mbert.token_to_id("Zürich")} <= kept
    assert set(np.flatnonzero(counts.total >= 3).tolist()) <= kept
    rare = [i for i in np.flatnonzero((counts.total > 0) & (counts.total < 3))
            if len(mbert.id_to_token(int(i)).removeprefix("##")) > 1]  # not a single character
    assert rare and not set(rare) & kept
    report = trim.unk_report(counts, vocabulary, mbert)

    for language in ("en", "hi"):  # word-level reference: transformers-style word_ids of both tokenizations
        became_unk = resegmented = tokens = 0
        for line in corpus_lines(language):
            before = mbert.encode(line, add_special_tokens=False)
            after = vocabulary.tokenizer.encode(line, add_special_tokens=False)
            tokens += len(before.ids)
            for word in sorted(set(before.word_ids)):
                pieces_before = [t for t, w in zip(before.tokens, before.word_ids) if w == word]
                pieces_after = [t for t, w in zip(after.tokens, after.word_ids) if w == word]
                if pieces_after == ["[UNK]"] and pieces_before != ["[UNK]"]:
                    became_unk += len(pieces_before)
                elif pieces_after != pieces_before:
                    resegmented += len(pieces_before)
        assert report[language]["tokens"] == tokens
        assert (report[language]["became_unk"], report[language]["resegmented"]) == (became_unk, resegmented)
        assert resegmented > 0.05 * tokens  # min_count 3 on 250 lines drops many pieces


def test_a_binarised_corpus_gives_the_tokens_it_counts(mbert, tmp_path):
    prepare(embedded_corpus_dir(), tmp_path / "bin", languages=["en", "fr"], num_workers=0, progress=False)
    counts = trim.corpus_token_counts(tmp_path / "bin", mbert)
    assert list(counts.counts) == ["en+fr"]
    vocabulary = trim.select_vocabulary(mbert, counts.total)
    from_text = trim.select_vocabulary(mbert, trim.corpus_token_counts(embedded_corpus_dir(), mbert,
                                                                       languages=["en", "fr"]).total)
    # Binarisation drops lines of < 12 tokens, so the binarised counts see a subset of the text's tokens.
    assert set(vocabulary.kept_ids.tolist()) <= set(from_text.kept_ids.tolist())
    assert set(np.flatnonzero(counts.total).tolist()) <= set(vocabulary.kept_ids.tolist())
    assert trim.unk_report(counts, vocabulary, mbert)["en+fr"]["became_unk"] == 0
    with pytest.raises(trim.TrimError, match="cover its languages \\(en, fr\\) together"):
        trim.corpus_token_counts(tmp_path / "bin", mbert, languages=["en"])


def test_tfds_wikipedia_is_read_per_language(mbert, monkeypatch):
    """The `wikipedia` source goes through `distil.data.text.WikipediaSource` (tested with tfds in test_text.py);
    here a stand-in yields the embedded corpus' lines, so the counts must equal the text folder's."""
    from distil.data import text

    class FakeWikipedia:
        def __init__(self, language, data_dir, date):
            self.language = language

        def __iter__(self):
            return iter(corpus_lines(self.language))

    monkeypatch.setattr(text, "WikipediaSource", FakeWikipedia)
    from_wikipedia = trim.corpus_token_counts("wikipedia", mbert, languages=["sw", "tr"], data_dir="unused")
    from_folder = trim.corpus_token_counts(embedded_corpus_dir(), mbert, languages=["sw", "tr"])
    assert list(from_wikipedia.counts) == ["sw", "tr"]
    for language in ("sw", "tr"):
        np.testing.assert_array_equal(from_wikipedia.counts[language], from_folder.counts[language])


# ------------------------------------------------------------------------------------ distillation on kept ids

TINY = dict(vocab_size=61, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=24, head="mlm", add_pooler=False)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_trimmed_kl_equals_the_full_kl_restricted_and_renormalised_to_kept_ids():
    teacher = create_model(ModelConfig(**TINY), seed=1)
    teacher.mlm_head.bias.set_value(jnp.asarray(np.random.default_rng(1).normal(size=61), jnp.float32))
    student = init_student_from_teacher(teacher, teacher_layers=(0, 2))
    student.mlm_head.bias.set_value(jnp.asarray(np.random.default_rng(2).normal(size=61), jnp.float32))
    rng = np.random.default_rng(0)
    kept_ids = np.sort(np.concatenate([np.arange(5), rng.choice(np.arange(5, 61), 30, replace=False)]))
    trimmed_teacher, trimmed_student = trim.trim_model(teacher, kept_ids), trim.trim_model(student, kept_ids)
    old_to_new = np.full(61, -1)
    old_to_new[kept_ids] = np.arange(len(kept_ids))

    lengths = np.array([12, 7, 3, 10])
    mask = (np.arange(12)[None] < lengths[:, None]).astype(np.int32)
    old_ids = np.where(mask == 1, rng.choice(kept_ids[5:], size=mask.shape), 0).astype(np.int32)  # all kept
    new_ids = old_to_new[old_ids].astype(np.int32)
    teacher_new, student_new = (model(jnp.asarray(new_ids), jnp.asarray(mask))
                                for model in (trimmed_teacher, trimmed_student))
    teacher_old, student_old = (model(jnp.asarray(old_ids), jnp.asarray(mask)) for model in (teacher, student))
    for before, after in zip(teacher_old.hidden_states, teacher_new.hidden_states, strict=True):
        assert np.abs(np.asarray(before) - np.asarray(after)).max() <= 1e-6

    temperature = 2.0
    kl_sum, count = losses.soft_cross_entropy(student_new.logits, teacher_new.logits, mask, temperature)
    # NumPy reference: the full-vocabulary models' logits, restricted to the kept ids, renormalised by log-softmax.
    log_p_teacher = _log_softmax(np.asarray(teacher_old.logits, np.float64)[..., kept_ids] / temperature)
    log_p_student = _log_softmax(np.asarray(student_old.logits, np.float64)[..., kept_ids] / temperature)
    reference = (np.exp(log_p_teacher) * (log_p_teacher - log_p_student)).sum(-1)
    reference = temperature**2 * (reference * mask).sum()
    assert float(count) == mask.sum()
    np.testing.assert_allclose(float(kl_sum), reference, rtol=1e-5)
    # ... which differs from the KL over the full vocabulary.
    full_teacher = _log_softmax(np.asarray(teacher_old.logits, np.float64) / temperature)
    full_student = _log_softmax(np.asarray(student_old.logits, np.float64) / temperature)
    full = temperature**2 * ((np.exp(full_teacher) * (full_teacher - full_student)).sum(-1) * mask).sum()
    assert abs(full - reference) > 1e-3 * reference


FAST = ["data.max_length=64", "batching.pad_to_multiple=64", "batching.global_batch=16", "batching.micro_batches=2",
        "log_every_steps=1", "checkpoint.every_steps=100", "teacher.max_position_embeddings=64",
        "student.max_position_embeddings=64", "num_steps=2", "mesh.num_devices=1"]


def test_a_trimmed_runlocal_distillation_runs_end_to_end(tmp_path):
    from distil.train.distill import train_and_evaluate
    from distil.train.metrics import read_metrics

    config = load_config("distilmbert:runlocal,languages=en,fr", FAST)
    assert config.trim.enabled and config.data.languages == ("en", "fr") and config.tokenizer == ""
    workdir = tmp_path / "run"
    summary = train_and_evaluate(config, workdir)
    kept_ids = trim.read_kept_ids(workdir / "trim")
    assert 1000 < len(kept_ids) < 10_000
    rows = read_metrics(workdir / "metrics.jsonl")
    assert [row["step"] for row in rows] == [1, 2] and all(np.isfinite(row["ce"]) for row in rows)
    assert summary["teacher"]["vocab_size"] == summary["student"]["vocab_size"] == len(kept_ids)
    assert json.loads((workdir / "data" / "index.json").read_text())["vocab_size"] == len(kept_ids)
    assert (workdir / "student" / "vocab.txt").read_bytes() == (workdir / "trim" / "vocab.txt").read_bytes()
    np.testing.assert_array_equal(trim.read_kept_ids(workdir / "student"), kept_ids)
    student = transformers.AutoModelForMaskedLM.from_pretrained(workdir / "student")
    assert type(student).__name__ == "DistilBertForMaskedLM" and student.config.vocab_size == len(kept_ids)
    # A trimmed student trims again (a DistilBERT folder, ids relative to its own vocabulary).
    assert cli.main(["trim", str(workdir / "student"), str(tmp_path / "en"), "--corpus", str(embedded_corpus_dir()),
                     "--languages", "en"]) == 0
    assert len(trim.read_kept_ids(tmp_path / "en")) < len(kept_ids)


def test_the_languages_variant_parses_with_runlocal():
    from distil.config import SHIPPED_CONFIGS_DIR, import_file

    get_config = import_file(SHIPPED_CONFIGS_DIR / "distilmbert.py", "config").get_config

    assert get_config("languages=en,fr,de,runlocal").data.languages == ("en", "fr", "de")
    assert get_config("runlocal").trim.enabled is False
    assert get_config("runlocal").tokenizer == str(embedded_wordpiece_vocab())
    for bad, message in (("languages=", "variant languages= names no value"), ("en", "unknown variant 'en'"),
                         ("vocab=en", "unknown variant 'vocab'")):
        with pytest.raises(ValueError, match=message):
            get_config(bad)


# ---------------------------------------------------------------------------------------------- bad input

CORPUS = embedded_corpus_dir()
USAGE_ERRORS = {
    "missing source": (["{tmp}/nope", "{tmp}/out", "--corpus", CORPUS], "{tmp}/nope: no such folder"),
    "destination is the source": (["{teacher}", "{teacher}", "--corpus", CORPUS], "{teacher}: is the source folder"),
    "missing corpus": (["{teacher}", "{tmp}/out", "--corpus", "{tmp}/nocorpus"],
                       "text source {tmp}/nocorpus is neither a file nor a folder"),
    "unknown language": (["{teacher}", "{tmp}/out", "--corpus", CORPUS, "--languages", "en,xx"],
                         f"--languages: {CORPUS} has no <lang>.txt for xx"),
    "--min-count 0": (["{teacher}", "{tmp}/out", "--corpus", CORPUS, "--min-count", "0"],
                      "argument --min-count: expected an integer >= 1, got '0'"),
    "--keep-vocab token not in the vocabulary": (["{teacher}", "{tmp}/out", "--corpus", CORPUS, "--keep-vocab",
                                                  "{tmp}/keep.txt"], "{tmp}/keep.txt:2: token 'notatoken§' is not in"),
    "--keep-vocab missing": (["{teacher}", "{tmp}/out", "--corpus", CORPUS, "--keep-vocab", "{tmp}/nokeep.txt"],
                             "{tmp}/nokeep.txt: --keep-vocab token file not found"),
    "a model without its tokenizer": (["{tmp}/bare", "{tmp}/out", "--corpus", CORPUS],
                                      "distil trim needs the model's tokenizer in its folder"),
    "a binarised corpus of another vocabulary": (["{teacher}", "{tmp}/out", "--corpus", "{bin8k}"],
                                                 "the corpus was binarised with a vocabulary of 8000 tokens"),
    "wikipedia without --data-dir": (["{teacher}", "{tmp}/out", "--corpus", "wikipedia", "--languages", "en"],
                                     "--corpus wikipedia needs --data-dir"),
    "a destination with a user's files": (["{teacher}", "{tmp}/mine", "--corpus", CORPUS],
                                          "{tmp}/mine: holds files distil did not write (notes.txt)"),
    "--config.* given": (["{teacher}", "{tmp}/out", "--corpus", CORPUS, "--config.seed=1"],
                         "--config.seed=1: distil trim takes no config"),
}


@pytest.fixture(scope="module")
def binarised_8k(tmp_path_factory):
    out = tmp_path_factory.mktemp("bin8k") / "bin"
    prepare(embedded_corpus_file("sw"), out, tokenizer_path=embedded_wordpiece_vocab(), num_workers=0, progress=False)
    return out


@pytest.mark.parametrize("case", USAGE_ERRORS)
def test_bad_input_is_one_line_with_exit_2(case, folders, binarised_8k, tmp_path, capsys):
    argv, message = USAGE_ERRORS[case]
    (tmp_path / "keep.txt").write_text("Paris\nnotatoken§\n", encoding="utf-8")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    hf.save_pretrained(create_model(ModelConfig(**TINY), seed=0), tmp_path / "bare")
    names = dict(tmp=tmp_path, teacher=folders / "teacher", bin8k=binarised_8k)
    capsys.readouterr()
    code = cli.main(["trim", *[str(arg).format(**names) for arg in argv]])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("distil trim: error: ") and "Traceback" not in err, err
    assert message.format(**names) in err, err
    assert not (tmp_path / "out").exists() and (tmp_path / "mine" / "notes.txt").read_text() == "mine"


def test_ctrl_c_is_one_line_with_exit_130(folders, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trim, "corpus_token_counts", interrupted)
    capsys.readouterr()
    code = cli.main(["trim", str(folders / "teacher"), str(tmp_path / "out"), "--corpus", str(CORPUS)])
    assert code == 130 and capsys.readouterr().err == "distil trim: interrupted; the destination is unchanged\n"
    assert not (tmp_path / "out").exists()
