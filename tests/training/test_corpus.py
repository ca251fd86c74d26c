"""The corpus rebuild (training/corpus.py, training/rdata.py) on a slice of the real package.

tests/data/r-cran-janeaustenr-slice.deb is a genuine Debian package built with dpkg-deb whose R lazy-load database
was written by R itself (`tools:::makeLazyLoadDB`) from the first 40 lines of each novel of r-cran-janeaustenr
1.0.0-1: the format the reader must understand, at 9 KB.
"""

import json
from pathlib import Path

import pytest

from training import corpus, rdata

SLICE = Path(__file__).parents[1] / "data" / "r-cran-janeaustenr-slice.deb"


def test_reads_every_novel_from_the_package():
    novels = corpus.read_novels(SLICE)
    assert list(novels) == list(corpus.NOVELS)
    assert all(len(lines) == 40 for lines in novels.values())
    assert novels["prideprejudice"][:3] == ["PRIDE AND PREJUDICE", "", "By Jane Austen"]
    assert "It is a truth universally acknowledged, that a single man in possession" in novels["prideprejudice"]
    assert novels["persuasion"][0] == "Persuasion"


def test_unwrap_joins_lines_into_paragraphs():
    assert corpus.unwrap(["A b", "c.", "", "", "D", None, "e"]) == "A b c.\n\nD\n\ne"
    assert corpus.unwrap(["", "  x  ", "y", ""]) == "x y"


def test_build_writes_splits_and_manifest(tmp_path):
    out = tmp_path / "corpus"
    manifest = corpus.build_corpus(SLICE, out)
    train, heldout = (out / "train.txt").read_text(), (out / "heldout.txt").read_text()
    assert train.count(corpus.DOCUMENT_SEPARATOR) == 4  # five novels
    assert heldout.startswith("Persuasion\n\nby\n\nJane Austen") and corpus.DOCUMENT_SEPARATOR not in heldout
    assert "Sir Walter Elliot" not in train and "It is a truth universally acknowledged" in train
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk == manifest
    assert manifest["files"]["train.txt"]["sha256"] == corpus.sha256((out / "train.txt").read_bytes())
    assert manifest["source"]["sha256"] == corpus.sha256(SLICE.read_bytes())
    assert manifest["splits"]["heldout.txt"] == ["persuasion"]
    # The slice is not the package the shipped model saw, and the lock check says so.
    assert any("differs" in p for p in corpus.check_against_lock(manifest))


def test_build_is_deterministic(tmp_path):
    a = corpus.build_corpus(SLICE, tmp_path / "a")
    b = corpus.build_corpus(SLICE, tmp_path / "b")
    assert a["files"] == b["files"]


def test_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path):
    out = tmp_path / "corpus"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(corpus.CorpusError, match="exists"):
        corpus.build_corpus(SLICE, out)
    assert (out / "mine.txt").read_text() == "keep"

    broken = tmp_path / "broken.deb"
    blob = bytearray(SLICE.read_bytes())
    broken.write_bytes(bytes(blob[: len(blob) // 2]))
    with pytest.raises(corpus.CorpusError, match="broken.deb"):
        corpus.build_corpus(broken, tmp_path / "never")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.deb", "corpus"]


def test_not_a_deb_and_wrong_package_are_named(tmp_path):
    text = tmp_path / "notes.deb"
    text.write_text("hello")
    with pytest.raises(corpus.CorpusError, match="not a Debian package"):
        corpus.read_novels(text)
    with pytest.raises(corpus.CorpusError, match="missing usr/lib/R/site-library/janeaustenr/data/Rdata.rdx"):
        corpus.read_deb_members(SLICE, ("usr/lib/R/site-library/janeaustenr/data/Rdata.rdx",
                                        "usr/lib/R/site-library/janeaustenr/data/Rdata.rdx.nope"))


def test_rdata_reader_refuses_damage(tmp_path):
    members = corpus.read_deb_members(SLICE, (corpus.DATA_DIR + "Rdata.rdx", corpus.DATA_DIR + "Rdata.rdb"))
    rdx, rdb = tmp_path / "Rdata.rdx", tmp_path / "Rdata.rdb"
    rdx.write_bytes(members[corpus.DATA_DIR + "Rdata.rdx"])
    rdb.write_bytes(members[corpus.DATA_DIR + "Rdata.rdb"])
    index = rdata.read_lazyload_index(rdx)
    offset, length = index["emma"]
    assert rdata.read_lazyload_object(rdb, offset, length)[0] == "EMMA"
    with pytest.raises(rdata.RFormatError, match="truncated"):
        rdata.read_lazyload_object(rdb, offset, length + 10**6)
    damaged = bytearray(rdb.read_bytes())
    damaged[offset + 8] ^= 0xFF
    rdb.write_bytes(bytes(damaged))
    with pytest.raises(rdata.RFormatError):
        rdata.read_lazyload_object(rdb, offset, length)
    with pytest.raises(rdata.RFormatError, match="header"):
        rdata.unserialize(b"A\nxxxxxxxxxxxx")


def test_command_line(tmp_path, capsys):
    assert corpus.main(["--deb", str(SLICE), "--out", str(tmp_path / "c")]) == 0
    assert "train.txt" in capsys.readouterr().out
    assert corpus.main(["--deb", str(SLICE), "--out", str(tmp_path / "c")]) == 2
    assert "exists" in capsys.readouterr().err
