"""data/: sentence files to training blocks: read, dedupe, split, tokenize, pack, cache; and `data inspect`."""
