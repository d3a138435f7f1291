"""Build a tiny Llama and its tokenizer offline: for tests, ``rescore demo`` and benchmarks.

The tokenizer is a byte-level BPE trained with ``tokenizers`` on shipped text (WikiText-2 from
``../shared/data`` by default); the weights are random (seeded). Special tokens: ``<s>`` (bos, added in
front of every encoded text, like Llama tokenizers), ``</s>`` (eos), ``<pad>``, and the ChatML markers
``<|im_start|>`` / ``<|im_end|>``; ``<|im_end|>`` also ends generation. Everything is deterministic for a
given set of parameters, and a directory that already holds a build with the same parameters is reused.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rescore.core import content_hash
from rescore.errors import MissingDataError

BOS, EOS, PAD, IM_START, IM_END = "<s>", "</s>", "<pad>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [BOS, EOS, PAD, IM_START, IM_END]

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MARKER = "rescore-tiny.json"  # parameters of the build in out_dir (the cache key)
BUILDER_VERSION = 1


def default_text_path() -> Path:
    """``../shared/data/wikitext2/wiki.test.raw`` relative to the project root."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"


def build_tiny_model(
    out_dir: str | Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    vocab: int = 2048,
    intermediate: int | None = None,
    max_position: int = 512,
    seed: int = 0,
    chat_template: bool = True,
    init_std: float = 0.1,
    logit_std: float = 3.0,
    text: str | None = None,
    text_path: str | Path | None = None,
) -> Path:
    """Write a random-init ``LlamaForCausalLM`` and a trained BPE tokenizer to ``out_dir``; return it.

    ``text`` (or ``text_path``) is the tokenizer training text; by default the shipped WikiText-2 test
    split, falling back to ``text`` when that file is missing. ``head_dim = hidden // heads`` should be
    32 or 64 (vLLM's CPU attention supports only those). ``init_std`` is larger than Llama's 0.02 so that
    the random model's next-token distributions are far from uniform (sampling and greedy checks then
    mean something); ``logit_std`` scales the output head so that logits have about that spread.
    ``chat_template=False`` builds a tokenizer without a chat template.
    """
    out = Path(out_dir)
    params: dict[str, Any] = {
        "builder": BUILDER_VERSION,
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "vocab": vocab,
        "intermediate": intermediate or 4 * hidden,
        "max_position": max_position,
        "seed": seed,
        "chat_template": chat_template,
        "init_std": init_std,
        "logit_std": logit_std,
    }
    corpus, source = _training_text(text, text_path)
    params["text"] = content_hash(corpus)
    marker = out / MARKER
    if marker.is_file():
        try:
            if json.loads(marker.read_text()) == params:
                return out
        except ValueError:
            pass
    if out.exists():
        shutil.rmtree(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    from rescore.gen.loading import quiet_libraries

    quiet_libraries()
    _build_tokenizer(corpus, vocab, chat_template).save_pretrained(tmp)
    _build_model(params).save_pretrained(tmp, safe_serialization=True)
    (tmp / MARKER).write_text(json.dumps({**params}, indent=1, sort_keys=True))
    (tmp / "README.md").write_text(
        f"Tiny random-init Llama built by rescore.gen.tiny (tokenizer trained on {source}).\n"
    )
    tmp.rename(out)
    return out


def _training_text(text: str | None, text_path: str | Path | None) -> tuple[str, str]:
    path = Path(text_path) if text_path is not None else default_text_path()
    if path.is_file():
        return path.read_text(encoding="utf-8"), path.name
    if text:
        return text, "caller text"
    raise MissingDataError(
        f"no training text for the tiny tokenizer: {path} does not exist",
        hint="run from the project checkout next to ../shared/data, or pass text=...",
    )


def _build_tokenizer(corpus: str, vocab: int, chat_template: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Fixed-size chunks keep training deterministic and independent of line structure.
    tok.train_from_iterator((corpus[i : i + 10_000] for i in range(0, len(corpus), 10_000)), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[IM_START, IM_END],
        model_max_length=1 << 30,
    )
    if chat_template:
        hf.chat_template = CHATML_TEMPLATE
    return hf


def _build_model(params: dict[str, Any]) -> Any:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    # Token ids follow SPECIAL_TOKENS order: the trainer puts special tokens first.
    bos, eos, pad, im_end = 0, 1, 2, 4
    config = LlamaConfig(
        vocab_size=params["vocab"],
        hidden_size=params["hidden"],
        intermediate_size=params["intermediate"],
        num_hidden_layers=params["layers"],
        num_attention_heads=params["heads"],
        num_key_value_heads=params["heads"],
        max_position_embeddings=params["max_position"],
        initializer_range=params["init_std"],
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        tie_word_embeddings=False,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params["seed"])
        model = LlamaForCausalLM(config)
        # Hidden states leave the final RMSNorm with unit scale, so logits have std ~ sqrt(hidden) * w_std.
        torch.nn.init.normal_(model.lm_head.weight, std=params["logit_std"] / params["hidden"] ** 0.5)
    model.generation_config = GenerationConfig(bos_token_id=bos, eos_token_id=[eos, im_end], pad_token_id=pad)
    return model.eval()
