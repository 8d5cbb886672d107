"""Sentences as gpt2tune reads them: one sentence a line (.txt), a text field (.jsonl) or column (.csv), each also
gzipped (.txt.gz, .jsonl.gz, .csv.gz); a text column of a Parquet file, of a folder written by datasets'
save_to_disk, or of a Hugging Face dataset (hf:NAME[:CONFIG][:SPLIT], through datasets.load_dataset); exact
duplicates removed in order.

Parquet files and datasets are read with pyarrow a batch of rows at a time (whitespace collapsed by pyarrow's
compute kernels), never whole into Python lists: at 4M sentences Parquet prepares like a .txt file.
"""

from __future__ import annotations

import codecs
import csv
import functools
import gzip
import hashlib
import io
import json
import os
import re
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from gpt2tune.errors import UserError
from gpt2tune.files import check_not_binary, check_regular_file, decode_text, is_text
from gpt2tune.files import digest as file_digest

if TYPE_CHECKING:
    import pyarrow as pa

MAX_LINE_CHARS = 20_000  # a "sentence" longer than this is a file in the wrong shape, not a sentence
HF_PREFIX = "hf:"
ROWS = 65536  # rows per batch of a Parquet file or dataset
TEXT_SUFFIXES = (".jsonl", ".csv", ".txt")
SPLIT_NAMES = ("train", "validation", "test")
# Python's whitespace (what str.split() splits on) in RE2 syntax: the ASCII controls \t..\r and \x1c..\x1f, \x85,
# and the Unicode separators (spaces, line and paragraph separators)
WHITESPACE = r"[\t-\r\x{1c}-\x{1f}\x{85}\p{Z}]+"
# a run of whitespace within a line (what str.split() splits on) other than one plain space: two or more
# characters, or one that is not a space (matching every single space made this pass 10x slower)
_SPACES = re.compile(r"(?: [^\S\n]|[^\S\n ])[^\S\n]*")


def read_sentences(path: str | Path | Source, text_column: str = "text") -> list[str]:
    """Read sentences from any --data source (see the module); blank lines and rows skipped."""
    src = source(path)
    sentences = list(iter_sentences(src, text_column))
    if not sentences:
        raise UserError(f"{src} holds no sentences (it is empty or only blank lines)")
    return sentences


def check_data_path(p: str | Path | Source) -> Source:
    """The data source p names, or a UserError unless it can be read."""
    return source(p)


def iter_sentences(p: str | Path | Source, text_column: str = "text") -> Iterator[str]:
    """The sentences of a data source one at a time (whitespace collapsed, blank lines skipped), streamed."""
    for batch in iter_sentence_batches(p, text_column):
        yield from batch


def iter_sentence_batches(p: str | Path | Source, text_column: str = "text") -> Iterator[list[str]]:
    """The sentences of a data source, a few MiB of text at a time (whitespace collapsed, blank lines skipped)."""
    src = source(p)
    if src.arrow:
        yield from arrow_batches(src, text_column)
        return
    if src.kind in ("jsonl", "csv"):  # rows may span lines (csv) or need the whole text's error messages
        text = decode_text(src.path, read_bytes(src))
        rows = (_read_jsonl if src.kind == "jsonl" else _read_csv)(src.path, text, text_column)
        for a in range(0, len(rows), 65536):
            batch = [" ".join(row.split()) for row in rows[a:a + 65536]]
            _check_lengths(src.path, batch, a)
            yield [s for s in batch if s]
        return
    number = 0
    for lines in _text_lines(src):  # lines without line breaks: whitespace collapsed in a few passes over the text
        batch = _collapse("\n".join(lines)).split("\n")
        _check_lengths(src.path, batch, number)
        number += len(batch)
        yield list(filter(None, batch))


def _collapse(text: str) -> str:
    """Every line of text as " ".join(line.split()), in a few passes over the whole text."""
    return _SPACES.sub(" ", text).replace(" \n", "\n").replace("\n ", "\n").strip(" ")


def _check_lengths(p: Path | str, rows: list[str], before: int, unit: str = "line") -> None:
    if rows and max(map(len, rows)) > MAX_LINE_CHARS:
        i = next(i for i, s in enumerate(rows) if len(s) > MAX_LINE_CHARS)
        raise UserError(f"{p}: {unit} {before + i + 1} is {len(rows[i]):,} characters long; expected one sentence "
                        f"per {unit} (at most {MAX_LINE_CHARS:,} characters)")


def _text_lines(src: Source) -> Iterator[list[str]]:
    """A text file's lines without their line breaks, decoded as UTF-8 piece by piece (4 MiB at a time: a whole
    4M-line file never sits in memory); a .gz file decompressed on the way."""
    p = src.path
    with open_binary(src) as f:
        check_not_binary(p, _read_gz(src, f, 65536))
        f.seek(0)
        decoder = codecs.getincrementaldecoder("utf-8-sig")()
        tail = ""
        while True:
            raw = _read_gz(src, f, 1 << 22)
            try:
                text = tail + decoder.decode(raw, final=not raw)
            except UnicodeDecodeError:
                decode_text(p, read_bytes(src))  # names the bad byte and its line
                raise
            lines = text.splitlines(keepends=True)
            # the last piece may be a line cut in two by the read: keep it for the next round
            tail = lines.pop() if raw and lines and lines[-1].splitlines() == [lines[-1]] else ""
            if lines:
                yield "".join(lines).splitlines()
            if not raw:
                return


def _read_jsonl(p: Path, text: str, field: str) -> list[str]:
    return [obj[field] for _, obj in jsonl_rows(p, text, field)]


def jsonl_rows(p: Path, text: str, field: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a .jsonl file whose `field` holds valid text; a line
    that is not JSON, lacks the field or holds a lone surrogate is one error line naming it."""
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{p}: line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get(field), str):
            raise UserError(f"{p}: line {number} has no text field '{field}' (use --text-column)")
        if not is_text(obj[field]):
            raise UserError(f"{p}: line {number} holds invalid text (a lone surrogate escape such as \\ud800)")
        yield number, obj


def _read_csv(p: Path, text: str, column: str) -> list[str]:
    reader = csv.DictReader(io.StringIO(text))
    try:
        if reader.fieldnames is None or column not in reader.fieldnames:
            have = ", ".join(reader.fieldnames or []) or "none"
            raise UserError(f"{p} has no column '{column}' (columns: {have}); use --text-column")
        return [row[column] or "" for row in reader]
    except csv.Error as e:  # e.g. a field over csv's limit of 131,072 characters
        raise UserError(f"{p}: line {reader.line_num + 1} is not valid CSV ({e})") from None


def dedupe(sentences: Sequence[str]) -> list[str]:
    """Exact duplicates removed, first occurrence kept, order kept."""
    return list(dict.fromkeys(sentences))


# ------------------------------------------------------------------------------- where sentences come from

@dataclass(frozen=True)
class Source:
    """A --data value: a file (kind txt, jsonl, csv, parquet; gz when compressed), a save_to_disk folder
    (kind saved) or a Hugging Face dataset (kind hf: name, config, split)."""

    spec: str
    kind: str
    path: Path | None = None
    gz: bool = False
    name: str | None = None
    config: str | None = None
    split: str | None = None

    def __str__(self) -> str:
        return self.spec

    @property
    def label(self) -> str:
        """How progress lines name it: the file or folder name, else the hf: spec."""
        return self.path.name if self.path is not None else self.spec

    @property
    def format(self) -> str:
        """The format, for cache keys and data.json: txt, jsonl.gz, parquet, saved, hf."""
        return self.kind + (".gz" if self.gz else "")

    @property
    def arrow(self) -> bool:
        """Whether pyarrow reads it (Parquet, a datasets folder, a Hugging Face dataset)."""
        return self.kind in ("parquet", "saved", "hf")


def source(spec: str | Path | Source) -> Source:
    """The data source a --data value names, checked: a UserError unless it can be read."""
    if isinstance(spec, Source):
        return spec
    text = str(spec)
    if text.startswith(HF_PREFIX):
        return _hf_source(text)
    p = Path(spec)
    if not p.exists():
        raise UserError(f"data file not found: {p}")
    if p.is_dir():
        if (p / "dataset_info.json").is_file() or (p / "dataset_dict.json").is_file():
            return Source(text, "saved", p)
        raise UserError(f"data path is a directory, not a file (nor a folder written by datasets' save_to_disk): {p}")
    check_regular_file(p, "data file")  # a FIFO or device would block, or be consumed, by hashing and reading
    suffixes = [s.lower() for s in p.suffixes]
    gz = bool(suffixes) and suffixes[-1] == ".gz"
    inner = suffixes[-2] if gz and len(suffixes) > 1 else (suffixes[-1] if suffixes and not gz else "")
    if inner == ".parquet" and not gz:
        return Source(text, "parquet", p)
    kind = inner[1:] if inner in TEXT_SUFFIXES else "txt"
    return Source(text, kind, p, gz=gz)


def _hf_source(text: str) -> Source:
    """hf:NAME[:CONFIG][:SPLIT]; with two parts the second is a split when it names one (train, validation,
    test, or a slice such as train[:10%]), else a config; hf:NAME::SPLIT skips the config."""
    parts = re.split(r":(?![^\[]*\])", text[len(HF_PREFIX):])  # a split's slice, train[:10%], keeps its colon
    if not parts[0] or len(parts) > 3:
        raise UserError(f"--data {text}: expected hf:NAME, hf:NAME:CONFIG, hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    name, config, split = parts[0], None, None
    if len(parts) == 2:
        second = parts[1]
        if second.split("[")[0] in SPLIT_NAMES:
            split = second
        else:
            config = second or None
    elif len(parts) == 3:
        config, split = parts[1] or None, parts[2] or None
    return Source(text, "hf", name=name, config=config, split=split)


def absolute(spec: str) -> str:
    """The --data value a run records: a file or folder as an absolute path; hf:... as given."""
    return spec if spec.startswith(HF_PREFIX) else str(Path(spec).resolve())


def same(a: str, b: str) -> bool:
    """Whether two --data values name the same data."""
    return absolute(a) == absolute(b)


# ----------------------------------------------------------------------------------------- content and size

def digest(src: Source | str) -> str:
    """SHA-256 of the data's content: a file's bytes; a dataset's Arrow files (and which split)."""
    src = src if isinstance(src, Source) else source(src)
    if not src.arrow or src.kind == "parquet":
        return file_digest(src.path)
    h = hashlib.sha256()
    for f in _arrow_files(src):
        h.update(Path(f).name.encode() + b"\0" + file_digest(f).encode())
    return h.hexdigest()


def _arrow_files(src: Source) -> list[str]:
    files = [c["filename"] for c in dataset(src).cache_files]
    if not files:  # an in-memory dataset (no files): its fingerprint is all there is
        raise UserError(f"{src}: the dataset has no files on disk to read")
    return files


def size_hint(src: Source, text_column: str) -> int:
    """About how many bytes of text the data holds (to size a buffer once): a text file's size (a .gz file's
    size uncompressed, from its trailer), a Parquet column's uncompressed size, a dataset's column size."""
    if src.kind == "parquet":
        meta = _parquet(src).metadata
        return sum(rg.column(i).total_uncompressed_size for rg in (meta.row_group(r) for r in range(meta.num_row_groups))
                   for i in range(rg.num_columns) if rg.column(i).path_in_schema == text_column)
    if src.arrow:
        return sum(os.path.getsize(f) for f in _arrow_files(src))
    size = src.path.stat().st_size
    if src.gz and size >= 4:
        with open(src.path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")  # the size modulo 4 GiB: a hint, not a promise
    return size


# --------------------------------------------------------------------------------------- text files (and .gz)

def open_binary(src: Source) -> BinaryIO:
    """A text file's bytes, decompressed when it is .gz."""
    return gzip.open(src.path, "rb") if src.gz else open(src.path, "rb")


def read_bytes(src: Source) -> bytes:
    """A text file's whole content (decompressed), or a UserError for a damaged .gz file."""
    with open_binary(src) as f:
        return _read_gz(src, f, -1)


def _read_gz(src: Source, f: BinaryIO, size: int) -> bytes:
    try:
        return f.read(size)
    except (OSError, EOFError, gzip.BadGzipFile) as e:  # not gzip at all, or a cut file that ends early
        if not src.gz:
            raise
        raise UserError(f"{src.path} is not a valid gzip file ({e})") from None


# ------------------------------------------------------------------------------------- Parquet and datasets

def arrow_batches(src: Source, text_column: str) -> Iterator[list[str]]:
    """The sentences of a Parquet file or dataset, ROWS rows at a time: whitespace collapsed (as str.split()
    would), empty and missing rows skipped."""
    _pyarrow()
    import pyarrow.compute as pc

    before = 0
    for column in _columns(src, text_column):
        collapsed = pc.utf8_trim(pc.replace_substring_regex(column, WHITESPACE, " "), " ")
        rows = collapsed.to_pylist()
        kept = list(filter(None, rows))
        _check_lengths(str(src), kept if len(kept) == len(rows) else [r or "" for r in rows], before, "row")
        before += len(rows)
        yield kept


def _columns(src: Source, text_column: str) -> Iterator[pa.Array]:
    """The text column, a batch of rows at a time."""
    import pyarrow as pa

    if src.kind == "parquet":
        pf = _parquet(src)
        names = pf.schema_arrow.names
        _check_column(src, text_column, names, pf.schema_arrow.field(text_column).type if text_column in names
                      else None)
        try:
            for batch in pf.iter_batches(batch_size=ROWS, columns=[text_column]):
                yield batch.column(0)
        except (OSError, pa.ArrowException) as e:
            raise UserError(f"{src.path}: cannot read the Parquet file ({_first_line(e)})") from None
        return
    ds = dataset(src)
    _check_column(src, text_column, ds.column_names, ds.features.arrow_schema.field(text_column).type
                  if text_column in ds.column_names else None)
    for table in ds.select_columns([text_column]).with_format("arrow").iter(batch_size=ROWS):
        yield table.column(0).combine_chunks()


def _check_column(src: Source, column: str, names: list[str], kind: Any) -> None:
    import pyarrow as pa

    if kind is None:
        raise UserError(f"{src} has no column '{column}' (columns: {', '.join(names) or 'none'}); "
                        "use --text-column")
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise UserError(f"{src}: column '{column}' holds {kind}, not text; use --text-column")


def _pyarrow() -> None:
    """A UserError naming the extra to install when pyarrow is missing."""
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise UserError("reading Parquet files and datasets needs pyarrow and datasets: "
                        "pip install 'gpt2tune[formats]'") from None


def _parquet(src: Source):
    _pyarrow()
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        # read a page at a time (4 MiB buffered), not the whole file at once: 0.19 GB peak at 4M sentences, not 0.4
        return pq.ParquetFile(src.path, buffer_size=1 << 22, pre_buffer=False)
    except (OSError, pa.ArrowException) as e:
        raise UserError(f"{src.path} is not a valid Parquet file ({_first_line(e)})") from None


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


@functools.lru_cache(maxsize=4)
def dataset(src: Source):
    """The datasets.Dataset a folder or hf: source names (memory-mapped Arrow files, loaded once per process)."""
    datasets = _datasets()
    if src.kind == "saved":
        try:
            loaded = datasets.load_from_disk(str(src.path))
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{src.path}: cannot load the datasets folder ({_first_line(e)})") from None
        return _one_split(src, loaded, f"give --data {src.path}/SPLIT")
    try:
        loaded = datasets.load_dataset(src.name, src.config, split=src.split)
    except Exception as e:  # noqa: BLE001 (the hub, the cache and the builders raise many kinds; each is one line)
        offline = " (offline: only datasets already in the local Hugging Face cache can be had)" \
            if datasets.config.HF_DATASETS_OFFLINE or datasets.config.HF_HUB_OFFLINE else ""
        raise UserError(f"dataset {src.name}{':' + src.config if src.config else ''} cannot be had: "
                        f"{_first_line(e)}{offline}") from None
    return _one_split(src, loaded, f"give --data hf:{src.name}:{src.config or ''}:SPLIT")


def _one_split(src: Source, loaded, advice: str):
    """A Dataset; of a DatasetDict, its only split or 'train'."""
    if not hasattr(loaded, "keys"):
        return loaded
    splits = list(loaded.keys())
    if len(splits) == 1 or "train" in splits:
        return loaded[splits[0] if len(splits) == 1 else "train"]
    raise UserError(f"{src} holds the splits {', '.join(splits)}; {advice}")


def _datasets():
    """The datasets library, quiet (its own log lines would mix with ours), or a UserError naming the extra."""
    try:
        import datasets
    except ImportError:
        raise UserError("reading Parquet files and datasets needs the datasets library: "
                        "pip install 'gpt2tune[formats]'") from None
    datasets.utils.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        datasets.disable_progress_bars()
    return datasets
