"""Rebuild the training corpus, Jane Austen's six novels, from Debian's `r-cran-janeaustenr` package, offline.

    python -m training.corpus [--deb r-cran-janeaustenr_1.0.0-1_all.deb] [--out corpus/] [--force]

Without `--deb` the package is fetched with `apt-get download` (the Debian archive is the only source needed).
The novels are public domain; the packaging (Julia Silge's janeaustenr, Debian's r-cran-janeaustenr) is MIT.
The .deb is read with the standard library: an `ar` archive whose `data.tar.*` holds the installed R package, whose
`data/Rdata.rdb` keeps each novel as an R character vector of hard-wrapped lines (see `rdata.py`).

Output (written to a staging folder and renamed into place, so OUT either is complete or does not exist):
    train.txt      five novels, paragraphs unwrapped to one line each, separated by a blank line, novels by \\f
    heldout.txt    the held-out novel (Persuasion, the last one Austen finished), same layout
    manifest.json  source package, its SHA-256, license, per-novel counts, and the SHA-256 of each output file
"""

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from training.rdata import RFormatError, read_lazyload_index, read_lazyload_object

PACKAGE = "r-cran-janeaustenr"
DATA_DIR = "usr/lib/R/site-library/janeaustenr/data/"
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey", "persuasion")
HELDOUT = ("persuasion",)
from training.constants import DOCUMENT_SEPARATOR
LICENSE = ("Texts: public domain (Jane Austen, 1811-1818). Packaging: janeaustenr by Julia Silge (MIT), "
           "Debian package r-cran-janeaustenr (MIT).")
LOCK_FILE = Path(__file__).with_name("corpus.lock.json")  # checksums of the corpus the shipped model was trained on


class CorpusError(RuntimeError):
    """The source package is missing, damaged or not the expected one."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_deb_members(deb: Path, wanted: tuple[str, ...]) -> dict[str, bytes]:
    """The files `wanted` (paths inside the package) from a .deb: an `ar` archive holding `data.tar.{xz,gz,bz2}`."""
    blob = Path(deb).read_bytes()
    if not blob.startswith(b"!<arch>\n"):
        raise CorpusError(f"{deb}: not a Debian package (no ar archive header)")
    pos, data_tar = 8, None
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        name, size = header[:16].decode("ascii", "replace").strip().rstrip("/"), header[48:58].strip()
        if not size.isdigit():
            raise CorpusError(f"{deb}: damaged ar member header at byte {pos}")
        start, size = pos + 60, int(size)
        if name.startswith("data.tar"):
            data_tar = blob[start:start + size]
            if len(data_tar) != size:
                raise CorpusError(f"{deb}: {name} is truncated ({len(data_tar)} of {size} bytes)")
        pos = start + size + (size % 2)  # members are 2-byte aligned
    if data_tar is None:
        raise CorpusError(f"{deb}: no data.tar member")
    found = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data_tar)) as tar:
            for member in tar:
                path = member.name.removeprefix("./")
                if path in wanted and member.isfile():
                    found[path] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, OSError) as err:
        raise CorpusError(f"{deb}: damaged data archive ({err})") from None
    missing = [w for w in wanted if w not in found]
    if missing:
        raise CorpusError(f"{deb}: missing {', '.join(missing)} (is this {PACKAGE}?)")
    return found


def read_novels(deb: Path) -> dict[str, list[str]]:
    """{novel name: its lines} from the package, every novel of NOVELS present."""
    files = read_deb_members(deb, (DATA_DIR + "Rdata.rdx", DATA_DIR + "Rdata.rdb"))
    with tempfile.TemporaryDirectory() as tmp:
        rdx, rdb = Path(tmp, "Rdata.rdx"), Path(tmp, "Rdata.rdb")
        rdx.write_bytes(files[DATA_DIR + "Rdata.rdx"])
        rdb.write_bytes(files[DATA_DIR + "Rdata.rdb"])
        try:
            index = read_lazyload_index(rdx)
            missing = [n for n in NOVELS if n not in index]
            if missing:
                raise CorpusError(f"{deb}: the package's data has no {', '.join(missing)} (has {sorted(index)})")
            novels = {name: read_lazyload_object(rdb, *index[name]) for name in NOVELS}
        except RFormatError as err:
            raise CorpusError(f"{deb}: {err}") from None
    for name, lines in novels.items():
        if not isinstance(lines, list) or not all(isinstance(x, str) or x is None for x in lines):
            raise CorpusError(f"{deb}: {name} is not a character vector")
    return novels


def unwrap(lines: list[str]) -> str:
    """Hard-wrapped lines -> paragraphs: lines of a paragraph joined by a space, paragraphs by a blank line."""
    paragraphs, current = [], []
    for line in lines:
        line = (line or "").strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


def build_corpus(deb: Path, out: Path, force: bool = False) -> dict:
    """Writes train.txt, heldout.txt and manifest.json to `out` atomically; returns the manifest."""
    out = Path(out)
    if out.exists() and not force:
        raise CorpusError(f"{out} exists (pass --force to replace it)")
    novels = read_novels(deb)
    texts = {name: unwrap(lines) for name, lines in novels.items()}
    splits = {"train.txt": [n for n in NOVELS if n not in HELDOUT], "heldout.txt": list(HELDOUT)}
    contents = {file: DOCUMENT_SEPARATOR.join(texts[n] for n in names).encode() for file, names in splits.items()}
    manifest = {
        "source": {"package": PACKAGE, "file": Path(deb).name, "sha256": sha256(Path(deb).read_bytes())},
        "license": LICENSE,
        "document_separator": DOCUMENT_SEPARATOR,
        "splits": {file: names for file, names in splits.items()},
        "novels": {n: {"lines": len(novels[n]), "characters": len(texts[n]), "words": len(texts[n].split())}
                   for n in NOVELS},
        "files": {file: {"bytes": len(data), "sha256": sha256(data)} for file, data in contents.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        for file, data in contents.items():
            (stage / file).write_bytes(data)
        (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return manifest


def check_against_lock(manifest: dict, lock_file: Path = LOCK_FILE) -> list[str]:
    """Differences between this build and the corpus the shipped model saw (empty when identical)."""
    lock = json.loads(Path(lock_file).read_text())
    problems = []
    if manifest["source"]["sha256"] != lock["source"]["sha256"]:
        problems.append(f"package {manifest['source']['file']} differs from {lock['source']['file']} (SHA-256)")
    for file, expected in lock["files"].items():
        if manifest["files"].get(file, {}).get("sha256") != expected["sha256"]:
            problems.append(f"{file} differs from the locked corpus")
    return problems


def download_package(directory: Path) -> Path:
    """`apt-get download r-cran-janeaustenr` into `directory`; the .deb's path."""
    try:
        subprocess.run(["apt-get", "download", PACKAGE], cwd=directory, check=True, capture_output=True, text=True)
    except FileNotFoundError:
        raise CorpusError("apt-get not found: download the .deb by hand and pass --deb") from None
    except subprocess.CalledProcessError as err:
        raise CorpusError(f"apt-get download {PACKAGE} failed: {err.stderr.strip().splitlines()[-1:]}") from None
    debs = sorted(Path(directory).glob(f"{PACKAGE}_*.deb"))
    if not debs:
        raise CorpusError(f"apt-get download {PACKAGE} wrote no .deb")
    return debs[-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--deb", type=Path, help=f"a downloaded {PACKAGE} .deb (default: apt-get download it)")
    parser.add_argument("--out", type=Path, default=Path("corpus"), help="output folder (default: corpus/)")
    parser.add_argument("--force", action="store_true", help="replace OUT if it exists")
    args = parser.parse_args(argv)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            deb = args.deb or download_package(Path(tmp))
            manifest = build_corpus(deb, args.out, force=args.force)
    except (CorpusError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for file, info in manifest["files"].items():
        print(f"{args.out / file}: {info['bytes']:,} bytes, sha256 {info['sha256'][:16]}...")
    problems = check_against_lock(manifest) if LOCK_FILE.exists() else []
    for problem in problems:
        print(f"warning: {problem}: a model trained on it will not match the shipped one", file=sys.stderr)
    if LOCK_FILE.exists() and not problems:
        print(f"identical to the corpus the shipped model was trained on ({LOCK_FILE.name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
