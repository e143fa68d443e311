"""distil.lines: the one UTF-8 line reader, on hand-written bytes."""

from __future__ import annotations

import pytest

from distil.lines import read_utf8_lines


class MadeUpError(ValueError):
    pass


def test_line_ends_bom_and_unicode_separators(tmp_path):
    path = tmp_path / "x.tsv"
    # BOM, CRLF and LF ends, a blank line, a lone '\r' inside a line, U+2028 and U+0085 (which str.splitlines
    # would break at), and no final newline.
    path.write_bytes("\ufeffa\tb\r\n\nc\rd\n line\u2028sep \u0085x\nlast".encode("utf-8"))
    assert list(read_utf8_lines(path, what="test file")) == ["a\tb", "", "c\rd", " line\u2028sep \u0085x", "last"]
    path.write_bytes(b"")
    assert list(read_utf8_lines(path, what="test file")) == []
    path.write_bytes(b"one\n")
    assert list(read_utf8_lines(path, what="test file")) == ["one"]  # the final '\n' ends a line, starts none


def test_errors_name_file_line_and_bytes(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nstill fine\nbroken \xff here\n")
    lines = read_utf8_lines(path, what="NLI file", error=MadeUpError)
    assert next(lines) == "fine"  # streams: the lines before the bad byte are read
    with pytest.raises(MadeUpError, match=r"bad\.txt:3: not valid UTF-8 \(invalid start byte at byte 7 of the line: "
                                          r"b'broken \\xff here\\n'\); expected a UTF-8 NLI file"):
        list(lines)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.txt: vocab\.txt not found"):
        list(read_utf8_lines(tmp_path / "nowhere.txt", what="vocab.txt"))
    with pytest.raises(FileNotFoundError, match="not found"):
        list(read_utf8_lines(tmp_path, what="folder"))
