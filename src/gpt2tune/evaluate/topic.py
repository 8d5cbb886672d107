"""What a title-conditioned run gains from its titles: held-out perplexity of the val sentences with their true
title against none, and how often `--about X` samples mention X or a word of page X's sentences."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from typing import Any, Sequence

from gpt2tune.config import SamplingConfig
from gpt2tune.data.condition import Titled, prefix
from gpt2tune.evaluate.text_metrics import words
from gpt2tune.model.sample import sample

COMMON_WORDS = 200  # the corpus's most frequent words say nothing about a page
MIN_WORD = 4  # shorter words neither
TITLES = 5  # titles sampled --about


def sentence_nll(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 16) -> list[tuple[float, int]]:
    """For each (prefix, sentence): -log P(sentence <eos> | <sos> prefix) in nats, and the sentence's token count
    (with <eos>) when encoded without a prefix; the prefix's own tokens are context, never scored."""
    import torch

    device = next(model.parameters()).device
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    rows = []
    for head, text in pairs:
        # a prefix's closing space goes with the sentence's first word, as the tokenizer splits the whole line
        spaced = head.endswith(" ")
        context = [bos] + (tokenizer(head[:-1] if spaced else head, add_special_tokens=False)["input_ids"]
                           if head else [])
        body = tokenizer((" " if spaced else "") + text, add_special_tokens=False)["input_ids"] + [eos]
        rows.append((context, body, len(tokenizer(text, add_special_tokens=False)["input_ids"]) + 1))
    out = []
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for a in range(0, len(rows), batch_size):
            chunk = rows[a:a + batch_size]
            width = max(len(c) + len(b) for c, b, _ in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for i, (c, b, _) in enumerate(chunk):
                ids[i, :len(c) + len(b)] = torch.tensor(c + b)
                mask[i, :len(c) + len(b)] = 1
            logp = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float().log_softmax(-1)
            for i, (c, b, n) in enumerate(chunk):
                targets = torch.tensor(b, device=device)
                scored = logp[i, len(c) - 1:len(c) + len(b) - 1].gather(-1, targets[:, None])
                out.append((-float(scored.sum()), n))
    model.train(was_training)
    return out


def title_perplexity(model, tokenizer, rows: Sequence[Titled], fmt: str) -> dict[str, Any]:
    """Perplexity of the sentences after `<sos> <title>: ` and after `<sos>` alone; both per token of the sentence
    as encoded without a title, so the two divide the same -log-likelihoods by the same count."""
    titled = sentence_nll(model, tokenizer, [(prefix(fmt, r.title), r.text) for r in rows])
    bare = sentence_nll(model, tokenizer, [("", r.text) for r in rows])
    tokens = sum(n for _, n in bare)
    with_title = math.exp(sum(x for x, _ in titled) / tokens)
    without = math.exp(sum(x for x, _ in bare) / tokens)
    return {"sentences": len(rows), "tokens": tokens, "perplexity_with_title": with_title,
            "perplexity_without_title": without, "lower_by": 1 - with_title / without}


def page_words(rows: Sequence[Titled]) -> dict[str, set[str]]:
    """Each title's words: those of its page's sentences, less short ones and the corpus's COMMON_WORDS most
    frequent (by pages) among the words of more than one page."""
    pages: dict[str, set[str]] = {}
    for r in rows:
        pages.setdefault(r.title, set()).update(w for w in words(r.text) if len(w) >= MIN_WORD)
    spread = Counter(w for vocab in pages.values() for w in vocab)
    common = {w for w, n in spread.most_common(COMMON_WORDS) if n > 1}
    return {title: vocab - common for title, vocab in pages.items()}


def mentions(text: str, prompt: str, title: str, vocabulary: set[str]) -> bool:
    """The continuation (past the prompt) names the title or uses a word of its page."""
    rest = text[len(prompt):] if text.startswith(prompt) else text
    said = set(words(rest))
    return set(words(title)) <= said or bool(said & vocabulary)


def about_rates(model, tokenizer, rows: Sequence[Titled], val: Sequence[Titled], fmt: str, prompts: Sequence[str],
                sampling: SamplingConfig, titles: int = TITLES) -> dict[str, Any]:
    """For the val split's most frequent titles: the share of samples, prompted with each keyword about the title
    and without it (same seed), that mention the title or a word of its page."""
    vocab = page_words(rows)
    chosen = [t for t, _ in sorted(Counter(r.title for r in val).items(), key=lambda kv: (-kv[1], kv[0]))[:titles]]
    hit = {"about": 0, "plain": 0}
    examples, total = [], 0
    plain = sample(model, tokenizer, prompts, dataclasses.replace(sampling, about=None))
    for title in chosen:
        drawn = sample(model, tokenizer, prompts, dataclasses.replace(sampling, about=None),
                       prefix=prefix(fmt, title))
        for a, b in zip(drawn, plain):
            hit["about"] += mentions(a.text, a.prompt, title, vocab.get(title, set()))
            hit["plain"] += mentions(b.text, b.prompt, title, vocab.get(title, set()))
            total += 1
        examples.append({"about": title, "prompt": drawn[0].prompt, "text": drawn[0].text})
    return {"titles": chosen, "samples": total, "mention_rate_about": hit["about"] / max(total, 1),
            "mention_rate_without": hit["plain"] / max(total, 1), "examples": examples}
