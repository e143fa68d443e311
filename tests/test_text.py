"""Text sources: UTF-8 line files, tensorflow-datasets Wikipedia (offline), and the language mixture.

Real data: the embedded corpus, and tfds' own fake Wikipedia dumps copied into tests/data/tfds_dummy/wikipedia.
"""

from __future__ import annotations

import bz2
import importlib.util
import json
import math
import xml.etree.ElementTree as ET
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from scipy import stats

from conftest import TEST_DATA
from distil.data import embedded, text, tfds_io

WIKIPEDIA_DUMPS = TEST_DATA / "tfds_dummy" / "wikipedia"


# ------------------------------------------------------------------------------------------------ line files
def test_read_lines_strips_and_skips_blank_lines(tmp_path):
    path = tmp_path / "sw.txt"
    path.write_bytes("\ufeffHabari  \r\n\n   \nya dunia\r\n\tMstari\n".encode("utf-8"))
    assert list(text.read_lines(path)) == ["Habari", "ya dunia", "Mstari"]
    assert list(text.TextFile(path)) == list(text.TextFile(path))  # re-iterable


def test_non_utf8_line_is_reported_with_file_and_line(tmp_path):
    path = tmp_path / "de.txt"
    path.write_bytes("erste Zeile\n\nGr\u00fc\u00dfe\n".encode("utf-8") + b"kaputt \xff\xfe hier\nletzte\n")
    with pytest.raises(text.TextSourceError, match=r"de\.txt:4: not valid UTF-8"):
        list(text.read_lines(path))


def test_missing_and_empty_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        text.TextFile(tmp_path / "nope.txt")
    for content in (b"", b"\n  \n\t\n"):
        (tmp_path / "xx.txt").write_bytes(content)
        with pytest.raises(text.TextSourceError, match=r"xx\.txt is empty"):
            list(text.read_lines(tmp_path / "xx.txt"))
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(text.TextSourceError, match="empty_folder holds no <lang>.txt"):
        text.language_files(tmp_path / "empty_folder")


def test_only_files_named_by_a_language_code_are_languages(tmp_path, caplog):
    for name in ("en.txt", "sw.txt", "zh-Hans.txt", "pt_BR.txt", "ceb.txt", "README.txt", "notes.txt",
                 "empty_en.txt", "en.txt.bak", "EN.txt", ".hidden.txt"):
        (tmp_path / name).write_text("a line\n")
    (tmp_path / "de.txt.d").mkdir()
    with caplog.at_level("WARNING", logger="distil"):
        sources = text.language_files(tmp_path)
    assert list(sources) == ["ceb", "en", "pt_BR", "sw", "zh-Hans"]
    assert caplog.messages == [f"{tmp_path}: skipped 6 file(s) not named <lang>.txt with a language code: EN.txt, "
                               "README.txt, de.txt.d, empty_en.txt, en.txt.bak, notes.txt"]
    with pytest.raises(text.TextSourceError, match=r"notes\.txt: the file name must be a language code"):
        text.language_files(tmp_path / "notes.txt")
    for name in ("en.txt", "sw.txt", "zh-Hans.txt", "pt_BR.txt", "ceb.txt"):
        (tmp_path / name).unlink()
    with pytest.raises(text.TextSourceError, match=r"holds no <lang>\.txt file \(e\.g\. en\.txt\) \(it holds EN\.txt"):
        text.language_files(tmp_path)


def test_language_folder_of_the_real_corpus():
    sources = text.language_files(embedded.embedded_corpus_dir())
    assert list(sources) == sorted(["ar", "bg", "de", "el", "en", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur",
                                    "vi", "zh"])
    for lang in ("en", "sw", "zh"):
        raw = embedded.embedded_corpus_file(lang).read_bytes().decode("utf-8").split("\n")
        expected = [line.strip() for line in raw if line.strip()]
        lines = list(sources[lang])
        assert lines == expected and text.count_lines(sources[lang]) == len(expected)
    assert text.count_lines(sources["sw"]) == 250  # embedded README: the first 250 lines of each language


# ------------------------------------------------------------------------------------------------ sampling
def test_language_sampling_probs_follow_the_formula():
    counts = {"en": 1000, "sw": 10, "hi": 250}
    probs = text.language_sampling_probs(counts, alpha=0.7)
    denominator = 1000 ** 0.7 + 10 ** 0.7 + 250 ** 0.7
    assert list(probs) == ["en", "sw", "hi"]
    for lang, count in counts.items():
        assert math.isclose(probs[lang], count ** 0.7 / denominator, rel_tol=1e-12)
    assert math.isclose(probs["en"], 0.7049, abs_tol=1e-4)  # 125.89 / (125.89 + 5.01 + 47.73)
    assert text.language_sampling_probs(counts, alpha=0.0) == pytest.approx({"en": 1 / 3, "sw": 1 / 3, "hi": 1 / 3})
    assert text.language_sampling_probs(counts, alpha=1.0) == pytest.approx({"en": 1000 / 1260, "sw": 10 / 1260,
                                                                            "hi": 250 / 1260})
    assert text.language_sampling_probs({"en": 5, "xx": 0})["xx"] == 0.0
    with pytest.raises(ValueError, match="'xx'"):
        text.language_sampling_probs({"en": 5, "xx": -1})


def test_mixture_draws_languages_with_the_given_probabilities():
    sources = {"en": [f"en{i}" for i in range(50)], "sw": ["sw0", "sw1", "sw2"], "hi": [f"hi{i}" for i in range(20)]}
    probs = text.language_sampling_probs({lang: len(lines) for lang, lines in sources.items()}, alpha=0.5)
    drawn = list(text.mix_languages(sources, probs, seed=7, num_lines=6000))
    assert len(drawn) == 6000
    assert drawn == list(text.mix_languages(sources, probs, seed=7, num_lines=6000))
    assert drawn != list(text.mix_languages(sources, probs, seed=8, num_lines=6000))
    observed = np.array([sum(lang == name for lang, _ in drawn) for name in sources])
    expected = 6000 * np.array([probs[name] for name in sources])
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    for lang, lines in sources.items():  # each language in its own order, restarting when exhausted
        mine = [line for name, line in drawn if name == lang]
        assert mine == [lines[i % len(lines)] for i in range(len(mine))]


def test_tag_languages_concatenates_in_mapping_order():
    assert list(text.tag_languages({"b": ["x", "y"], "a": ["z"]})) == [("b", "x"), ("b", "y"), ("a", "z")]


# ------------------------------------------------------------------------------------------------ tfds wikipedia
def dummy_dump_pages(wiki_dir: Path) -> list[dict[str, str]]:
    """Main-namespace, non-redirect pages of TFDS' fake dumps, as the builder's `_extract_content` keeps them."""
    pages = []
    for name in ("enwiki_fake.xml", "enwiki_fake2.xml"):
        root = ET.parse(wiki_dir / name).getroot()
        ns = root.tag[: root.tag.index("}") + 1]
        for page in root.iter(f"{ns}page"):
            body = page.find(f"{ns}revision/{ns}text").text or ""
            if page.find(f"{ns}ns").text != "0" or not body or body[:9].lower().startswith("#redirect"):
                continue
            pages.append({"title": page.find(f"{ns}title").text, "text": body})
    return pages


def write_wikipedia_dataset(data_dir: Path, language: str, articles: list[dict[str, str]], *,
                            file_format: str = "array_record") -> None:
    """A prepared `wikipedia/20230601.<language>` with the real builder's name, config, version and features.

    The real builder needs apache_beam + mwparserfromhell + mwxml to prepare; this writes the same on-disk
    dataset (array_record, features {title: Text, text: Text}) with a plain generator builder instead.
    """
    import tensorflow_datasets as tfds
    from tensorflow_datasets.text import wikipedia

    class _Wikipedia(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = "wikipedia"
        VERSION = wikipedia.Wikipedia.VERSION
        BUILDER_CONFIGS = [wikipedia.WikipediaConfig(language=language, date="20230601")]

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict({"title": tfds.features.Text(), "text": tfds.features.Text()}),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for key, article in enumerate(articles):
                yield key, article

    builder = _Wikipedia(data_dir=str(data_dir), config=f"20230601.{language}", file_format=file_format)
    builder.download_and_prepare()


@pytest.fixture
def wikipedia_dir(tmp_path) -> tuple[Path, list[dict[str, str]]]:
    pages = dummy_dump_pages(WIKIPEDIA_DUMPS)
    articles = [*pages, {"title": "Kiswahili", "text": "Kiswahili ni lugha.\n\n  Ni lugha ya Kibantu.  \n\n"}]
    write_wikipedia_dataset(tmp_path / "tfds", "sw", articles)
    return tmp_path / "tfds", articles


def test_wikipedia_paragraphs_through_data_source(wikipedia_dir):
    data_dir, articles = wikipedia_dir
    assert len(articles) == 5  # 6 fake pages, 1 redirect ("NeuralNetworks") dropped, + the Swahili article
    source = text.WikipediaSource("sw", data_dir, backend="data_source")
    lines = list(source)
    # TFDS stores examples in its own (hashed-key) order: each article's paragraphs must appear together, in order.
    per_article = [[p.strip() for p in a["text"].split("\n") if p.strip()] for a in articles]
    assert sorted(lines) == sorted(p for paragraphs in per_article for p in paragraphs)
    for paragraphs in per_article:
        start = lines.index(paragraphs[0])
        assert lines[start:start + len(paragraphs)] == paragraphs
    assert per_article[-1] == ["Kiswahili ni lugha.", "Ni lugha ya Kibantu."]
    assert "'''Machine translation''' is translation using a machine." in lines
    assert list(source) == lines  # re-iterable, same order
    assert list(text.WikipediaSource("sw", data_dir)) == lines  # "auto" picks data_source for array_record


def test_wikipedia_errors_name_data_dir_and_dataset(wikipedia_dir, tmp_path):
    data_dir, _ = wikipedia_dir
    with pytest.raises(tfds_io.TfdsDataError, match=r"holds no prepared dataset 'wikipedia/20230601\.de'") as err:
        list(text.WikipediaSource("de", data_dir))
    assert str(data_dir) in str(err.value)
    with pytest.raises(tfds_io.TfdsDataError, match="wikipedia/20990101.sw"):
        list(text.WikipediaSource("sw", data_dir, date="20990101"))
    if importlib.util.find_spec("tensorflow") is None:
        info_path = next(data_dir.glob("wikipedia/20230601.sw/*/dataset_info.json"))
        info = json.loads(info_path.read_text())
        info_path.write_text(json.dumps({**info, "fileFormat": "tfrecord"}))
        with pytest.raises(tfds_io.TfdsDataError, match=r"stored as tfrecord, which needs TensorFlow"):
            list(text.WikipediaSource("sw", data_dir))


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None, reason="TensorFlow (the optional `tf` extra) "
                    "is not installed, so the tfds.load path cannot run")
def test_wikipedia_through_tfds_load(wikipedia_dir, tmp_path):
    """tfrecord (what `tfds build` writes by default) is read through tfds.load; "auto" picks it."""
    array_record_dir, articles = wikipedia_dir
    tfrecord_dir = tmp_path / "tfds_tfrecord"
    write_wikipedia_dataset(tfrecord_dir, "sw", articles, file_format="tfrecord")
    via_tf = list(text.WikipediaSource("sw", tfrecord_dir, backend="tf"))
    assert sorted(via_tf) == sorted(text.WikipediaSource("sw", array_record_dir, backend="data_source"))
    assert sorted(text.WikipediaSource("sw", tfrecord_dir)) == sorted(via_tf)
    with pytest.raises(tfds_io.TfdsDataError, match=r"stored as array_record; tfds\.load reads only tfrecord"):
        list(text.WikipediaSource("sw", array_record_dir, backend="tf"))
    with pytest.raises(tfds_io.TfdsDataError, match=r"stored as tfrecord; tfds\.data_source reads only"):
        list(text.WikipediaSource("sw", tfrecord_dir, backend="data_source"))


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) is None for m in ("apache_beam", "mwparserfromhell", "mwxml")),
    reason="the real tfds wikipedia builder needs apache_beam, mwparserfromhell and mwxml to prepare (not installed)",
)
def test_real_wikipedia_builder_from_the_dummy_dumps(tmp_path):
    import tensorflow_datasets as tfds

    wiki_dir = WIKIPEDIA_DUMPS
    xml_bz2 = []
    for name in ("enwiki_fake.xml", "enwiki_fake2.xml"):
        xml_bz2.append(tmp_path / f"{name}.bz2")
        xml_bz2[-1].write_bytes(bz2.compress((wiki_dir / name).read_bytes()))
    with mock.patch.object(tfds.download.DownloadManager, "download_and_extract",
                           return_value={"info": str(wiki_dir / "dumpstatus.json")}), \
            mock.patch.object(tfds.download.DownloadManager, "download",
                              return_value={"xml": [str(p) for p in xml_bz2]}):
        builder = tfds.builder("wikipedia/20230601.en", data_dir=str(tmp_path / "tfds"), file_format="array_record")
        builder.download_and_prepare()
    lines = list(text.WikipediaSource("en", tmp_path / "tfds"))
    assert builder.info.splits["train"].num_examples == 4 and lines
