"""The data people have: Parquet, datasets folders, gzipped text and hf:NAME datasets read like a .txt file."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_corpus

from gpt2tune.cli import main
from gpt2tune.data import read
from gpt2tune.data.cache import cached_split
from gpt2tune.errors import UserError

datasets = pytest.importorskip("datasets")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

# whitespace of every kind, blank rows, a duplicate: what the .txt reader collapses and skips
ROWS = ["Tokyo  is the\tcapital.", " Osaka\u3000is big ", "", "Kyoto\u2003has\x1ftemples.", "Nara\x85has deer.",
        "Tokyo  is the\tcapital.", "   "] + make_corpus(40, seed=3)
EXPECTED = [" ".join(r.split()) for r in ROWS if r.split()]


def _parquet(path: Path, rows: list[str | None], column: str = "text", row_group: int | None = None) -> Path:
    pq.write_table(pa.table({column: rows, "n": list(range(len(rows)))}), path, row_group_size=row_group)
    return path


@pytest.fixture()
def formats(tmp_path) -> dict[str, Path]:
    """The same rows in every format gpt2tune reads."""
    text = "\n".join(r.replace("\x85", " ") for r in ROWS) + "\n"  # \x85 breaks a line in a .txt: not there
    jsonl = "".join(json.dumps({"text": r}) + "\n" for r in ROWS)
    csv = "text\n" + "".join('"' + r.replace('"', '""') + '"\n' for r in ROWS)
    out = {"txt.gz": tmp_path / "s.txt.gz", "jsonl.gz": tmp_path / "s.jsonl.gz", "csv.gz": tmp_path / "s.csv.gz"}
    for key, body in (("txt.gz", text), ("jsonl.gz", jsonl), ("csv.gz", csv)):
        out[key].write_bytes(gzip.compress(body.encode()))
    out["parquet"] = _parquet(tmp_path / "s.parquet", ROWS, row_group=10)
    datasets.Dataset.from_dict({"text": ROWS}).save_to_disk(str(tmp_path / "saved"))
    out["saved"] = tmp_path / "saved"
    return out


@pytest.mark.parametrize("kind", ["parquet", "saved", "txt.gz", "jsonl.gz", "csv.gz"])
def test_every_format_gives_the_sentences_a_txt_file_gives(formats, kind):
    src = read.source(formats[kind])
    assert src.format == kind
    got = read.read_sentences(formats[kind])
    want = [" ".join(r.replace("\x85", " ").split()) for r in ROWS if r.split()] if kind == "txt.gz" else EXPECTED
    assert got == want
    assert "Kyoto has temples." in got and "Nara has deer." in got  # Unicode and control whitespace collapsed


def test_parquet_is_read_a_batch_of_rows_at_a_time(tmp_path, monkeypatch):
    path = _parquet(tmp_path / "s.parquet", ROWS + [None, "x" * (read.MAX_LINE_CHARS + 1)], row_group=4)
    batches = []
    real = read.arrow_batches
    monkeypatch.setattr(read, "ROWS", 5)
    with pytest.raises(UserError, match=rf"s.parquet: row {len(ROWS) + 2} is {read.MAX_LINE_CHARS + 1:,} characters"):
        for b in real(read.source(path), "text"):
            batches.append(b)  # noqa: PERF402 (one at a time: the batches before the error are kept)
    assert max(map(len, batches)) <= 5 and len(batches) >= len(ROWS) // 5  # never the whole column at once
    read_so_far = [s for b in batches for s in b]  # up to the batch with the long row
    assert read_so_far == EXPECTED[:len(read_so_far)] and len(read_so_far) >= len(EXPECTED) - 5


def test_text_column_picks_the_field_and_a_wrong_one_is_one_line(tmp_path):
    path = _parquet(tmp_path / "s.parquet", ROWS, column="sentence")
    assert read.read_sentences(path, "sentence") == EXPECTED
    with pytest.raises(UserError, match=r"s.parquet has no column 'text' \(columns: sentence, n\); use --text-column"):
        read.read_sentences(path)
    with pytest.raises(UserError, match="column 'n' holds int64, not text"):
        read.read_sentences(path, "n")


@pytest.mark.parametrize("name, content, message", [
    ("bad.parquet", b"PAR1 not really", "is not a valid Parquet file"),
    ("bad.txt.gz", b"plain text, not gzip", "is not a valid gzip file"),
    ("cut.jsonl.gz", gzip.compress(b'{"text": "a"}\n' * 100)[:40], "is not a valid gzip file"),
])
def test_a_damaged_file_is_one_clear_line(tmp_path, capsys, name, content, message):
    (tmp_path / name).write_bytes(content)
    assert main(["data", "inspect", str(tmp_path / name)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in err[0]


def test_a_datasets_folder_with_several_splits(tmp_path):
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["a b", "c"]}),
                          "test": datasets.Dataset.from_dict({"text": ["d"]})}).save_to_disk(str(tmp_path / "dd"))
    assert read.read_sentences(tmp_path / "dd") == ["a b", "c"]  # train, as load_dataset's default
    assert read.read_sentences(tmp_path / "dd" / "test") == ["d"]
    datasets.DatasetDict({"a": datasets.Dataset.from_dict({"text": ["x"]}),
                          "b": datasets.Dataset.from_dict({"text": ["y"]})}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(UserError, match=r"holds the splits a, b; give --data .*ab/SPLIT"):
        read.read_sentences(tmp_path / "ab")
    (tmp_path / "plain").mkdir()
    with pytest.raises(UserError, match="data path is a directory, not a file"):
        read.read_sentences(tmp_path / "plain")


def test_the_split_cache_keys_on_the_content(tmp_path):
    cache = str(tmp_path / "cache")
    rows = make_corpus(200, seed=5)
    txt = tmp_path / "s.txt"
    txt.write_text("\n".join(rows) + "\n", encoding="utf-8")
    path = _parquet(tmp_path / "s.parquet", rows)
    a = cached_split(str(path), "text", 0.1, 42, None, True, cache)
    assert not a.hit and cached_split(str(path), "text", 0.1, 42, None, True, cache).hit
    plain = cached_split(str(txt), "text", 0.1, 42, None, True, cache)
    assert (a.path / "train.txt").read_bytes() == (plain.path / "train.txt").read_bytes()  # same split as .txt
    assert a.info["settings"]["format"] == "parquet"
    _parquet(path, rows[:-1] + ["Something else entirely."])  # same name, other content
    b = cached_split(str(path), "text", 0.1, 42, None, True, cache)
    assert not b.hit and b.path != a.path


@pytest.mark.parametrize("spec, name, config, split", [
    ("hf:wikitext", "wikitext", None, None),
    ("hf:wikitext:wikitext-2-raw-v1", "wikitext", "wikitext-2-raw-v1", None),
    ("hf:user/name:test", "user/name", None, "test"),
    ("hf:user/name:train[:10%]", "user/name", None, "train[:10%]"),
    ("hf:user/name:cfg:validation", "user/name", "cfg", "validation"),
    ("hf:user/name::test", "user/name", None, "test"),
])
def test_hf_names_parse(spec, name, config, split):
    src = read.source(spec)
    assert (src.kind, src.name, src.config, src.split) == ("hf", name, config, split)
    assert read.absolute(spec) == spec  # never made a path


def hub_cache(root: Path, repo: str, splits: dict[str, list[str]]) -> Path:
    """What load_dataset leaves in HF_DATASETS_CACHE after downloading `repo` (a Parquet dataset): built here by
    the same builder from local Parquet files, so load_dataset finds it offline."""
    from datasets.data_files import DataFilesDict
    from datasets.packaged_modules.parquet.parquet import Parquet

    namespace, name = repo.split("/")
    files = {}
    for split, rows in splits.items():
        files[split] = [str(_parquet(root / f"{split}.parquet", rows))]
    builder = Parquet(cache_dir=str(root / "cache"), dataset_name=name, config_id="default", hash="0" * 16,
                      data_files=DataFilesDict.from_patterns(files))
    builder.download_and_prepare()
    os.rename(root / "cache" / name, root / "cache" / f"{namespace}___{name}")
    return root / "cache"


@pytest.fixture(scope="module")
def hf_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf")
    cache = hub_cache(root, "tester/japan", {"train": make_corpus(120, seed=8), "test": make_corpus(30, seed=9)})
    return {**os.environ, "HF_DATASETS_CACHE": str(cache), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


def _gpt2tune(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gpt2tune", *args], capture_output=True, text=True, env=env,
                          check=False, timeout=600)


def test_train_on_an_hf_dataset_offline_then_evaluate_its_test_split(tiny_model, hf_env, tmp_path):
    out = tmp_path / "run"
    r = _gpt2tune(["train", "--model", str(tiny_model), "--data", "hf:tester/japan", "--out", str(out),
                   "--max-steps", "2", "--samples", "0", "--block-size", "64"], hf_env)
    assert r.returncode == 0, r.stderr
    assert "120 sentences, 120 unique" in r.stdout
    assert "data: hf:tester/japan\n" in (out / "config.yaml").read_text()  # recorded as given, not a path
    r = _gpt2tune(["evaluate", str(out), "--data", "hf:tester/japan:test", "--json"], hf_env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["sentences"] == 30


def test_a_dataset_that_cannot_be_had_is_one_line_naming_it(monkeypatch, capsys):
    def offline(name, config=None, split=None):  # what load_dataset raises offline for a dataset not in the cache
        raise ConnectionError(f"Couldn't reach '{name}' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    assert main(["data", "inspect", "hf:tester/nothere:cfg"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["gpt2tune: error: dataset tester/nothere:cfg cannot be had: Couldn't reach 'tester/nothere' on "
                   "the Hub (OfflineModeIsEnabled)" + (" (offline: only datasets already in the local Hugging Face "
                                                         "cache can be had)" if datasets.config.HF_HUB_OFFLINE else "")]


def test_train_on_parquet_then_resume_it(tiny_model, tmp_path, capsys):
    path = _parquet(tmp_path / "japan.parquet", make_corpus(200, seed=2))
    out = tmp_path / "run"
    args = ["train", "--model", str(tiny_model), "--data", str(path), "--out", str(out), "--max-steps", "2",
            "--samples", "0", "--block-size", "64"]
    assert main(args) == 0
    assert "200 sentences, 200 unique" in capsys.readouterr().out
    assert main(args[:-6] + ["--max-steps", "3", "--samples", "0", "--block-size", "64", "--resume"]) == 0
    assert "resuming" in capsys.readouterr().out
    _parquet(path, make_corpus(201, seed=2))
    assert main(args[:-6] + ["--max-steps", "4", "--samples", "0", "--block-size", "64", "--resume"]) != 0
    assert "changed since the run started" in capsys.readouterr().err
