# hf-logits MODEL REF OUT ADDS_BOS BOS TEXT [BASE ADAPTER...]: teacher-forced logits of the reference model
# on the tokens of llama-perplexity's reference file REF, its agreement with them, the same logits written
# to OUT in that file's format, and whether the model's tokenizer splits TEXT as llama.cpp did. The
# reference is BASE with the ADAPTERs applied by peft (the earlier ones merged, as training merged them,
# the run's own applied unmerged) when given, so a merge that missed an adapter shows; else MODEL itself.
# On a GPU the model is spread over the GPUs with CPU offload (device_map="auto"): no card must hold it all.


# The --kl-divergence-base format: tools/perplexity/perplexity.cpp
import os
import struct
import sys

if "answer" not in globals():  # run as common.py + this file; the import is for reading it alone
    from common import answer, say, tokenizer_of  # noqa: F401


def read_reference(path):
    with open(path, "rb") as f:
        if f.read(8) != b"_logits_":
            raise SystemExit(f"{path} is not a llama-perplexity logits file")
        n_ctx, n_vocab, n_chunk = struct.unpack("<Iii", f.read(12))
        import numpy as np

        tokens = np.frombuffer(f.read(4 * n_ctx * n_chunk), dtype=np.int32).reshape(n_chunk, n_ctx)
        nv = 2 * ((n_vocab + 1) // 2) + 4
        scored = n_ctx - 1 - n_ctx // 2
        logp = np.frombuffer(f.read(2 * nv * scored * n_chunk), dtype=np.uint16).reshape(n_chunk, scored, nv)
    return n_ctx, n_vocab, tokens, logp


def dequantize(row, n_vocab):
    import numpy as np

    scale, min_log_prob = np.frombuffer(row[:4].tobytes(), dtype=np.float32)
    return min_log_prob + scale * row[4:4 + n_vocab].astype(np.float32)


def quantize(logits, n_vocab):
    """perplexity.cpp's log_softmax(): 16 nats below the top kept, 65535 steps, two floats in front."""
    import numpy as np

    logits = logits.astype(np.float64)
    max_logit = logits.max()
    min_logit = max(logits.min(), max_logit - 16)
    log_sum_exp = np.log(np.exp(logits - max_logit).sum())
    min_log_prob = np.float32(min_logit - max_logit - log_sum_exp)
    scale = np.float32((max_logit - min_logit) / 65535.0)
    values = np.clip(np.rint((logits - min_logit) / scale), 0, 65535).astype(np.uint16)
    nv = 2 * ((n_vocab + 1) // 2) + 4
    row = np.zeros(nv, dtype=np.uint16)
    row[:4] = np.frombuffer(np.array([scale, min_log_prob], dtype=np.float32).tobytes(), dtype=np.uint16)
    row[4:4 + n_vocab] = values
    return row


def tokenizer_check(model_dir, text_path, tokens, adds_bos, bos_id):
    """How many of llama.cpp's tokens of the evaluation text the model's own tokenizer reproduces (how text
    splits; the BOS in front is the GGUF's choice, which llama.cpp follows)."""
    tok = tokenizer_of(model_dir)
    text = open(text_path, encoding="utf-8").read()
    if text.endswith("\n"):
        text = text[:-1]  # llama.cpp's -f drops one trailing newline
    ours = ([bos_id] if adds_bos else []) + tok(text, add_special_tokens=False)["input_ids"]
    theirs = [int(t) for t in tokens.reshape(-1)]
    n = min(len(ours), len(theirs))
    first = next((i for i in range(n) if ours[i] != theirs[i]), None)
    return {"compared": n, "first_mismatch": first,
            "same": sum(1 for i in range(n) if ours[i] == theirs[i]) if first is not None else n}


def fit_vocabulary(model, adapter):
    """An adapter trained after the vocabulary grew carries whole embedding rows (modules_to_save) for
    more tokens than the base has: resize the base to that many rows first (their values are replaced)."""
    from safetensors import safe_open

    path = os.path.join(adapter, "adapter_model.safetensors")
    if not os.path.isfile(path):
        return
    with safe_open(path, "pt") as f:
        rows = [f.get_slice(k).get_shape()[0] for k in f.keys()
                if "embed_tokens" in k and "modules_to_save" in k and "lora" not in k]
    if rows and rows[0] > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(rows[0])
        say(f"reference: the base's embeddings resized to {rows[0]} rows, as training did")


def reference_model(model_dir, chain):
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"trust_remote_code": True, "dtype": torch.float32}
    if torch.cuda.is_available():
        kwargs.update(dtype="auto", device_map="auto", offload_folder=tempfile.mkdtemp(prefix="tunedeck-offload-"))
    if chain:
        try:
            from peft import PeftModel

            model = AutoModelForCausalLM.from_pretrained(chain[0], **kwargs)
            for adapter in chain[1:-1]:
                fit_vocabulary(model, adapter)
                model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
            fit_vocabulary(model, chain[-1])
            model = PeftModel.from_pretrained(model, chain[-1])
            say(f"reference: {chain[0]} with {len(chain) - 1} adapter(s) applied by peft")
            return model
        except Exception as exc:  # noqa: BLE001 - said, then the merged model is the reference
            say(f"peft cannot apply the adapters ({type(exc).__name__}: {exc}); the merged model is the reference")
    return AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)


def hf_logits(model_dir, ref, out, adds_bos, bos_id, text_path, chain=()):
    import numpy as np
    import torch

    n_ctx, n_vocab, tokens, ref_logp = read_reference(ref)
    model = reference_model(model_dir, chain).eval()
    device = model.device
    first = n_ctx // 2
    agree = total = 0
    max_diff, kl_sum = 0.0, 0.0
    tmp = out + ".partial"
    with open(tmp, "wb") as f:
        f.write(b"_logits_" + struct.pack("<Iii", n_ctx, n_vocab, tokens.shape[0]))
        f.write(tokens.astype(np.int32).tobytes())
        for c, chunk in enumerate(tokens):
            ids = chunk.copy()
            if adds_bos:
                ids[0] = bos_id
            with torch.no_grad():
                logits = model(torch.tensor([ids], device=device)).logits[0].float().cpu().numpy()
            for j, pos in enumerate(range(first, n_ctx - 1)):
                row = logits[pos][:n_vocab]
                f.write(quantize(row, n_vocab).tobytes())
                hf = row - row.max() - np.log(np.exp(row - row.max()).sum())
                gg = dequantize(ref_logp[c, j], n_vocab)
                agree += int(hf.argmax() == gg.argmax())
                top = np.argsort(hf)[-32:]
                max_diff = max(max_diff, float(np.abs(hf[top] - gg[top]).max()))
                kl_sum += float((np.exp(hf) * (hf - gg)).sum())
                total += 1
            say(f"chunk {c + 1}/{tokens.shape[0]}: top-1 agreement so far {agree}/{total}")
    os.replace(tmp, out)
    answer({"tokens": total, "agree": agree, "agreement": agree / max(total, 1), "max_logprob_diff": max_diff,
            "mean_kl": kl_sum / max(total, 1), "n_ctx": n_ctx, "chunks": int(tokens.shape[0]),
            "tokenizer": tokenizer_check(model_dir, text_path, tokens, adds_bos, bos_id),
            "reference": "peft" if chain else "merged"})


if __name__ == "__main__":
    if sys.argv[1] != "hf-logits":
        raise SystemExit(f"unknown command {sys.argv[1]}")
    a = sys.argv[2:]
    hf_logits(a[0], a[1], a[2], a[3] == "1", int(a[4]), a[5], a[6:])
