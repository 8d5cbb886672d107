"""export/: a model to a GGUF file for llama.cpp, Ollama and LM Studio, checked for parity before it is named."""
