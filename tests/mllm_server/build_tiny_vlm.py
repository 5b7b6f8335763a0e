"""Build a tiny random-weight Idefics3 VLM that vLLM (CPU) can serve, fully offline.

Run with the vLLM venv:  .venv-vllm/bin/python tests/mllm_server/build_tiny_vlm.py OUT_DIR

Why Idefics3: its processor needs no torchvision (the PIL image-processor backend
is used), unlike Qwen2-VL. Sizes are the smallest vLLM's CPU backend accepts
(attention head_dim 64). Deterministic: fixed seed, locally trained tokenizer.

JSON closing: random weights never end a JSON value on their own, so the output
head is rigged to act as a fixed logit bias (see ``_add_logit_bias``) on top of
random logits (std ~1): tokens that close a string (``"``, ``"}`` ...) get
+QUOTE_BIAS, other closers (``}``, ``]``, ``]}``...) +CLOSE_BIAS, ``,`` +COMMA_BIAS,
digit-only tokens DIGIT_BIAS (so unbounded numbers end).
Under a JSON grammar, greedy decoding then yields minimal JSON (empty strings,
short numbers) and sampling closes each string with p~0.8 per token; without a
grammar the output is garbage, e.g. a run of quote characters (never valid JSON).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    PreTrainedTokenizerFast,
)

SEED = 1234
VOCAB_SIZE = 2048
IMAGE_SIZE = 112  # vision tower input; images are resized to this, never split
PATCH_SIZE = 14
SCALE_FACTOR = 2  # pixel-shuffle factor of the Idefics3 connector
IMAGE_SEQ_LEN = (IMAGE_SIZE // PATCH_SIZE) ** 2 // SCALE_FACTOR**2  # 16 tokens / image
# Ordered so a string closes before '}' / ']' (which are valid string chars) win,
# and an array/object closes before ',' opens another item.
QUOTE_BIAS = 10.0
CLOSE_BIAS = 6.0
COMMA_BIAS = 5.0
DIGIT_BIAS = -3.0  # digit-only tokens: keeps unbounded integers short (',' wins soon)
RANDOM_LOGIT_STD = 1.0

BOS, EOS, PAD = "<|im_start|>", "<end_of_utterance>", "<pad>"
IMAGE_TOKENS = ["<fake_token_around_image>", "<image>", "<global-img>"] + [
    f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)
]
SPECIAL_TOKENS = [PAD, BOS, EOS, *IMAGE_TOKENS]

# SmolVLM-style template; accepts string content and OpenAI-style content parts.
CHAT_TEMPLATE = (
    "<|im_start|>{% for message in messages %}{{ message['role'] | capitalize }}:"
    "{% if message['content'] is string %}{{ ' ' + message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'text' %}{{ ' ' + part['text'] }}"
    "{% elif part['type'] == 'image' or part['type'] == 'image_url' %}{{ '<image>' }}{% endif %}"
    "{% endfor %}{% endif %}<end_of_utterance>\n{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

WORDS = (
    "the a person hand cup table picks up puts down opens closes door drawer video frame "
    "kitchen left right object question answer what where when which who is are was "
    "holding moving toward away from into onto step task goal next previous action "
    "true false null yes no red green blue small large first second third"
).split()


def _corpus(rng: random.Random, n: int = 4000) -> list[str]:
    """Generated English-ish text plus JSON snippets, so JSON punctuation gets merges."""
    # Pseudo-words widen the corpus enough for the BPE trainer to fill VOCAB_SIZE.
    syllables = [c + v for c in "bcdfghklmnprstvwz" for v in "aeiou"]
    vocab = WORDS + ["".join(rng.choices(syllables, k=rng.randint(1, 4))) for _ in range(3000)]
    lines: list[str] = []
    for _ in range(n):
        words = [rng.choice(vocab) for _ in range(rng.randint(3, 12))]
        lines.append(" ".join(words).capitalize() + rng.choice([".", "?", "!"]))
        obj = {
            rng.choice(WORDS): rng.choice([" ".join(words[:3]), rng.randint(0, 999), True, None]),
            "answer": rng.choice(WORDS),
            "items": [rng.randint(0, 99) for _ in range(rng.randint(0, 3))],
        }
        lines.append(json.dumps(obj, separators=(",", ":") if rng.random() < 0.5 else (", ", ": ")))
    return lines


def build_tokenizer(rng: random.Random) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(rng), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=IMAGE_TOKENS,
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )


def build_config(tokenizer: PreTrainedTokenizerFast) -> Idefics3Config:
    ids = tokenizer.convert_tokens_to_ids
    text = dict(
        model_type="llama",
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,  # vLLM CPU attention rejects small head dims (e.g. 16)
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        bos_token_id=ids(BOS),
        eos_token_id=ids(EOS),
        pad_token_id=ids(PAD),
    )
    vision = dict(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIZE,
        patch_size=PATCH_SIZE,
    )
    return Idefics3Config(
        text_config=text,
        vision_config=vision,
        scale_factor=SCALE_FACTOR,
        image_token_id=ids("<image>"),
        pad_token_id=ids(PAD),
        tie_word_embeddings=False,
        bos_token_id=ids(BOS),
        eos_token_id=ids(EOS),
    )


@torch.no_grad()
def _add_logit_bias(model: Idefics3ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast) -> None:
    """Turn the last hidden dim into a constant feature so lm_head[:, d] acts as a bias.

    Llama's lm_head has no bias, so: no layer writes into residual dim d (its rows of
    o_proj/down_proj are zeroed), every token embedding has d = CONST, and CONST is
    large so after the final RMSNorm dim d is ~sqrt(hidden) whatever the input.
    """
    text = model.model.text_model
    lm_head = model.lm_head.weight  # [vocab, hidden]
    hidden = lm_head.shape[1]
    d = hidden - 1
    for layer in text.layers:
        layer.self_attn.o_proj.weight[d].zero_()
        layer.mlp.down_proj.weight[d].zero_()
    text.embed_tokens.weight[:, d] = 1.0  # other dims are ~N(0, 0.02)
    text.norm.weight[d] = 1.0
    # Random part of the logits (measured std ~RANDOM_LOGIT_STD), so free text varies.
    lm_head.normal_(0.0, 2.0 * RANDOM_LOGIT_STD / hidden**0.5)
    normed_d = hidden**0.5  # value of dim d after RMSNorm when it dominates
    bias = torch.zeros(lm_head.shape[0])
    for token_id in range(len(tokenizer)):
        text_of = tokenizer.decode([token_id])
        if text_of and set(text_of) <= set('"}]'):
            bias[token_id] = QUOTE_BIAS if text_of.startswith('"') else CLOSE_BIAS
        elif text_of == ",":
            bias[token_id] = COMMA_BIAS
        elif text_of.strip().isdigit():
            bias[token_id] = DIGIT_BIAS
    lm_head[:, d] = bias / normed_d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    out: Path = parser.parse_args().out_dir
    out.mkdir(parents=True, exist_ok=True)

    rng = random.Random(SEED)
    torch.manual_seed(SEED)
    tokenizer = build_tokenizer(rng)
    config = build_config(tokenizer)
    model = Idefics3ForConditionalGeneration(config).eval()
    _add_logit_bias(model, tokenizer)

    image_processor = Idefics3ImageProcessorPil(
        do_resize=True,
        size={"longest_edge": IMAGE_SIZE},
        max_image_size={"longest_edge": IMAGE_SIZE},
        do_image_splitting=False,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )
    processor = Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN,
        chat_template=CHAT_TEMPLATE,
    )
    model.generation_config.bos_token_id = config.bos_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out)
    processor.save_pretrained(out)
    # save_pretrained records the torchvision class name; name the PIL one so loading
    # needs no torchvision and logs no fallback warning.
    proc_cfg = out / "processor_config.json"
    cfg = json.loads(proc_cfg.read_text())
    cfg["image_processor"]["image_processor_type"] = "Idefics3ImageProcessorPil"
    proc_cfg.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"tiny Idefics3 saved to {out} ({n_params / 1e6:.2f}M params, vocab {len(tokenizer)})")


if __name__ == "__main__":
    main()
