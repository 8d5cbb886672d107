"""model/: load a causal LM and its tokenizer (hub id, directory, GGUF), check it, score it, sample from it."""
