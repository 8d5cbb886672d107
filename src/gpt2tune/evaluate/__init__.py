"""evaluate/: before and after: held-out perplexity, sample metrics, base-vs-tuned compare."""
