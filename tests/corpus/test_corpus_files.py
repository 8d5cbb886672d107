"""Reading a user's .txt, .md and .html files, and `clean_files` end to end."""

from __future__ import annotations

import json

import pytest

from gpt2tune.corpus import clean_files
from gpt2tune.corpus.files import html_paragraphs, markdown_paragraphs, read_paragraphs
from gpt2tune.errors import UserError

HTML = """<!DOCTYPE html><html><head><title>Kyoto notes</title><style>p {color: red}</style>
<script>var x = "Not prose at all, a script.";</script></head><body>
<nav><a href="/">Home</a> <a href="/about">About this site and its many pages</a></nav>
<h1>Kyoto</h1>
<p><b>Kyoto</b> was the <a href="/capital">capital</a> of Japan for over a thousand years.<sup class="reference">[1]</sup>
It has <i>many</i> temples.</p>
<!-- a comment that is not prose either -->
<ul><li>The Golden Pavilion is covered in gold leaf.</li><li>Short item</li></ul>
<pre>code_block = "Not prose, this is code."</pre>
<table><tr><td>Population was 1.46 million in the table.</td></tr></table>
<div>Kyoto hosts the Gion Matsuri every July.<br>It lasts the whole month.</div>
<h2>See also</h2><p>Nara is another old capital of the country.</p>
<h3>More links</h3><p>Osaka is a city that is near Kyoto too.</p>
<h2>Food</h2><p>Yudofu is a simple tofu dish from Kyoto.</p>
<footer>Copyright 2024 by the authors of this site.</footer>
</body></html>"""

MARKDOWN = """---
title: Notes on Osaka
tags: [japan]
---
# Osaka

Osaka is a large port city on the island of Honshu. It is *famous* for its food, like
[takoyaki](https://example.org/takoyaki) and `okonomiyaki`.

- Osaka Castle was built by Toyotomi Hideyoshi.
- Dotonbori is a lively district.

```python
print("This is code and not prose at all.")
```

| Ward | People |
|------|--------|
| Kita | About one hundred thousand people live here. |

## References

1. Smith, John. Osaka: A History. Osaka University Press, 2001.
"""


def test_html_paragraphs_keep_prose_only():
    assert html_paragraphs(HTML) == [
        "Kyoto was the capital of Japan for over a thousand years. It has many temples.",
        "The Golden Pavilion is covered in gold leaf.",
        "Short item",
        "Kyoto hosts the Gion Matsuri every July. It lasts the whole month.",
        "Yudofu is a simple tofu dish from Kyoto.",
    ]


def test_markdown_paragraphs_keep_prose_only():
    assert markdown_paragraphs(MARKDOWN) == [
        "Osaka is a large port city on the island of Honshu. It is famous for its food, like takoyaki and "
        "okonomiyaki.",
        "Osaka Castle was built by Toyotomi Hideyoshi.",
        "Dotonbori is a lively district.",
    ]


def test_clean_files_all_three_kinds(tmp_path):
    (tmp_path / "kyoto.html").write_text(HTML, encoding="utf-8")
    (tmp_path / "osaka.md").write_text(MARKDOWN, encoding="utf-8")
    (tmp_path / "notes.txt").write_text(
        "Nara was the first permanent capital\nof Japan, from 710 to 784.\n\nKyoto was the capital of Japan "
        "for over a thousand years.\n== See also ==\nList of capitals of Japan in order.\n", encoding="utf-8")
    out = tmp_path / "corpus.txt"
    result = clean_files([tmp_path / "kyoto.html", tmp_path / "osaka.md", tmp_path / "notes.txt"], out=str(out),
                         progress=False)
    assert out.read_text(encoding="utf-8").splitlines() == result.sentences == [
        "Kyoto was the capital of Japan for over a thousand years.",
        "The Golden Pavilion is covered in gold leaf.",
        "Kyoto hosts the Gion Matsuri every July.",
        "It lasts the whole month.",
        "Yudofu is a simple tofu dish from Kyoto.",
        "Osaka is a large port city on the island of Honshu.",
        "It is famous for its food, like takoyaki and okonomiyaki.",
        "Osaka Castle was built by Toyotomi Hideyoshi.",
        "Dotonbori is a lively district.",
        "Nara was the first permanent capital of Japan, from 710 to 784.",
    ]
    manifest = json.loads((tmp_path / "corpus.txt.manifest.json").read_text(encoding="utf-8"))
    assert [f["sentences_kept"] for f in manifest["files"]] == [5, 4, 1]
    assert manifest["totals"]["sentences_kept"] == 10
    dropped = {k: v for k, v in manifest["totals"]["dropped"].items() if v}
    # "It has many temples." / "Short item" / the Kyoto sentence again in notes.txt
    assert dropped == {"too_short": 1, "no_end": 1, "duplicate": 1}


def test_html_charset_is_read_from_the_document(tmp_path):
    p = tmp_path / "page.html"
    p.write_bytes('<html><head><meta charset="shift_jis"></head><body><p>東京は日本の首都です。</p></body></html>'
                  .encode("shift_jis"))
    assert read_paragraphs(p) == ["東京は日本の首都です。"]


@pytest.mark.parametrize("name, content, message", [
    ("missing.txt", None, "file not found"),
    ("data.pdf", b"%PDF-1.4", "unsupported file type .pdf"),
    ("latin1.txt", "caf\u00e9 au lait.".encode("latin-1"), "not UTF-8"),
    ("binary.txt", b"abc\x00def", "binary"),
])
def test_bad_input_files(tmp_path, name, content, message):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(UserError, match=message):
        read_paragraphs(p)


def test_clean_files_refuses_to_overwrite_and_needs_sentences(tmp_path):
    src = tmp_path / "a.txt"
    src.write_text("Kyoto has many temples and gardens.\n", encoding="utf-8")
    (tmp_path / "out.txt").write_text("mine\n")
    with pytest.raises(UserError, match="exists; pass --overwrite"):
        clean_files([src], out=str(tmp_path / "out.txt"))
    with pytest.raises(UserError, match="also an input file"):
        clean_files([src], out=str(src), overwrite=True)
    (tmp_path / "short.txt").write_text("Too short.\n", encoding="utf-8")
    with pytest.raises(UserError, match="no sentences kept"):
        clean_files([tmp_path / "short.txt"], out=str(tmp_path / "new.txt"))
    assert not (tmp_path / "new.txt").exists()
    with pytest.raises(UserError, match="max-words"):
        clean_files([src], out=str(tmp_path / "new.txt"), min_words=9, max_words=3)
