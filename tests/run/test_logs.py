"""run/logs.py: the one reader of metrics.jsonl and samples.jsonl keeps valid rows and says what it skipped."""

from __future__ import annotations

import json

from gpt2tune.run import logs


def test_read_rows_keeps_valid_rows_and_names_the_first_bad_line(tmp_path):
    p = tmp_path / "metrics.jsonl"
    good = {"epoch": 1, "step": 4, "val_loss": 2.5, "val_ppl": 12.2, "train_loss": 2.7, "elapsed_s": 3.0,
            "tokens_per_s": 100.0, "lr": 1e-4}
    p.write_text(json.dumps(good) + "\n" + '{"epoch": 2, "st' + "\n" + json.dumps([1, 2]) + "\n")
    rows, note = logs.read_rows(p, logs.metric_problem)
    assert rows == [good]
    assert note.startswith("skipped 2 lines of metrics.jsonl (line 2: not valid JSON")


def test_read_rows_of_a_file_cut_mid_character_is_not_an_error(tmp_path):
    p = tmp_path / "samples.jsonl"
    row = {"epoch": 0, "step": 0, "keyword": "Kyoto", "text": "Kyoto – 京都", "ended": True}
    p.write_bytes((json.dumps(row, ensure_ascii=False) + "\n").encode() + json.dumps(row, ensure_ascii=False)
                  .encode()[:-5])
    assert logs.read_samples(tmp_path) == [row]


def test_a_missing_log_has_no_rows(tmp_path):
    assert logs.read_metrics(tmp_path) == [] and logs.read_samples(tmp_path) == []


def test_append_then_truncate_keeps_the_first_rows(tmp_path):
    p = tmp_path / "m.jsonl"
    logs.append_jsonl(p, [{"a": 1}, {"a": 2}])
    logs.append_jsonl(p, [{"a": 3}])
    logs.truncate_jsonl(p, 2)
    assert [json.loads(x) for x in p.read_text().splitlines()] == [{"a": 1}, {"a": 2}]
