"""The options of `gpt2tune export` (torch-free, so `--help` stays fast)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from gpt2tune.config import check, check_device, check_fields, device_opt, opt, threads_opt

TYPES = ("f32", "f16", "bf16", "q8_0")
REPO_PART = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?")  # the Hub's user and repository names

# about 250 next-token positions (GPT-2 tokens): enough that "99% agree" allows a near-tie or two to flip
PARITY_PROMPTS = [
    "Japan", "Tokyo is the", "Kyoto is the", "Osaka is the",
    "Japan is an island country in East Asia, in the northwest Pacific Ocean, bordered by the Sea of Japan.",
    "Tokyo is the capital and the largest city of Japan, and the centre of its economy and government.",
    "Kyoto was the capital of Japan for more than a thousand years and is famous for its temples and gardens.",
    "The Shinkansen high speed railway connects Tokyo with Nagoya, Kyoto, Osaka and the cities of Kyushu.",
    "Mount Fuji is the highest mountain in Japan and an active volcano about one hundred kilometres from Tokyo.",
    "Osaka is known for its food, its merchants and its castle, and it is the heart of the Kansai region.",
    "Hokkaido is the northernmost of the main islands, with cold winters, deep snow and wide farmland.",
    "Japanese cuisine is based on rice, fish, soy sauce and vegetables that change with the seasons.",
    "Cherry blossoms bloom across the country in spring, and many people gather in parks to see them.",
    "The emperor is the symbol of the state, and the parliament is called the National Diet.",
]


@dataclass
class ExportConfig:
    """What `gpt2tune export` takes; every field is a CLI flag and a config-file key."""

    gguf: str = opt("", "the GGUF file to write, e.g. model.gguf")
    type: str = opt("f16", "f32|f16|bf16|q8_0 weight type (norms, biases and position embeddings stay f32)")
    ollama: bool = opt(False, "also write an Ollama Modelfile next to the file (NAME.Modelfile)")
    overwrite: bool = opt(False, "replace an existing file (and Modelfile)")
    min_top1: float = opt(0.99, "least next-token top-1 agreement an f16, bf16 or q8_0 file must reach")
    threads: int | None = threads_opt()
    device: str = device_opt()
    parity_prompts: list[str] = opt(PARITY_PROMPTS, "comma-separated prompts whose next-token logits the file "
                                                    "must reproduce")

    def validate(self) -> None:
        check_fields(self)
        check(bool(self.gguf), "no output file: give --gguf FILE")
        check(self.gguf.lower().endswith(".gguf"), f"--gguf {self.gguf}: the file name must end in .gguf")
        check_device(self.device)
        check(self.type in TYPES, f"type must be one of {', '.join(TYPES)}, got {self.type}")
        check(bool(self.parity_prompts), "give at least one parity prompt")
        check(0 < self.min_top1 <= 1, f"min-top1 must be in (0, 1], got {self.min_top1}")


@dataclass
class PushConfig:
    """What `gpt2tune push` takes; every field is a CLI flag and a config-file key."""

    repo: str = opt("", "the Hugging Face Hub repository to upload to, user/name (made when it does not exist)",
                    required=True)
    private: bool = opt(False, "make the repository private when push creates it")
    gguf: bool = opt(False, "also upload the GGUF file `gpt2tune export RUN --gguf FILE` wrote from this run's best/")
    message: str = opt("", "commit message (default: 'Upload <run> (gpt2tune)')")

    def validate(self) -> None:
        check_fields(self)
        check(bool(self.repo), "no repository: give --repo user/name")
        parts = self.repo.split("/")
        check(len(parts) == 2 and all(REPO_PART.fullmatch(p) for p in parts) and len(self.repo) <= 96,
              f"--repo {self.repo!r} is not a Hub repository id: give user/name (letters, digits, '-', '_', '.')")
