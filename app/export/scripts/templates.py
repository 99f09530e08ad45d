# Templates, asked of LLaMA-Factory itself, in one process (importing it takes seconds):
#   prepare RUN BASE TEMPLATE MODE   MODE infer: which template the run's saved chat template is, then its
#                                    chat format; check: the same for a TEMPLATE chosen by hand; given: the
#                                    chat format of TEMPLATE. The chat format: training-time prompts of two
#                                    conversations, the stop tokens, and Ollama templates reproducing them
#                                    (for a runtime that adds BOS itself, and for one that does not).
import copy
import json
import os
import re
import sys

if "answer" not in globals():  # run as common.py + this file; the import is for reading it alone
    from common import answer, say, tokenizer_of  # noqa: F401

CONVERSATIONS = {
    "with_system": [{"role": "system", "content": "You are a terse assistant."},
                    {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."},
                    {"role": "user", "content": "And another one?"}],
    "without_system": [{"role": "user", "content": "Hello there."}, {"role": "assistant", "content": "Hi."},
                       {"role": "user", "content": "How are you?"}],
}


def lf_prompt_ids(template, tokenizer, messages):
    """The token ids LLaMA-Factory's template puts before the model's next answer."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = [m for m in messages if m["role"] != "system"] + [{"role": "assistant", "content": ""}]
    pairs = template.encode_multiturn(tokenizer, turns, system)
    ids = []
    for prompt, response in pairs[:-1]:
        ids += prompt + response
    return ids + pairs[-1][0]


# Conversations only inference renders (besides CONVERSATIONS): a single turn, and an assistant turn last.
PROBES = {
    "single_turn": [{"role": "user", "content": "Hello there."}],
    "assistant_last": [{"role": "system", "content": "You are a terse assistant."},
                       {"role": "user", "content": "Name a colour."}, {"role": "assistant", "content": "Blue."}],
}


def saved_chat_template(run):
    path = os.path.join(run, "chat_template.jinja")
    if os.path.isfile(path):
        return open(path, encoding="utf-8").read(), "chat_template.jinja"
    try:
        config = json.load(open(os.path.join(run, "tokenizer_config.json"), encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    value = config.get("chat_template")
    if isinstance(value, list):
        value = next((t.get("template") for t in value if t.get("name") == "default"), None)
    return (value, "tokenizer_config.json") if isinstance(value, str) else (None, None)


def literal_pieces(template):
    out = []
    for formatter in (template.format_user, template.format_assistant):
        for slot in formatter.slots:
            if isinstance(slot, str):
                out += [p for p in slot.replace("{{idx}}", "").split("{{content}}") if p.strip()]
    return out


def render(tokenizer, jinja, messages):
    generation = messages[-1]["role"] != "assistant"
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=jinja,
                                         add_generation_prompt=generation)


def lf_ids(template, tokenizer, messages):
    """The ids LLaMA-Factory's template encodes for `messages`: the prompt before the next answer, or the
    whole conversation when an assistant turn is last."""
    if messages[-1]["role"] != "assistant":
        return lf_prompt_ids(template, tokenizer, messages)
    system = messages[0]["content"] if messages[0]["role"] == "system" else None
    pairs = template.encode_multiturn(tokenizer, [m for m in messages if m["role"] != "system"], system)
    return [i for prompt, response in pairs for i in prompt + response]


def first_difference(a, b):
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def piece(tok, ids, i):
    return tok.convert_ids_to_tokens(ids[i]) if i < len(ids) else "(end)"


def infer(run, base):
    """Which LLaMA-Factory template behaves like the chat template the run saved: the same token ids for
    the same conversations (with and without a system prompt, multi-turn, an assistant turn last).

    LLaMA-Factory saves its own Jinja for a template when the base model has none (an exact match names
    it); an instruct model keeps its own Jinja, which matches the template that encodes the same ids."""
    from llamafactory.data import TEMPLATES, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    saved, source = saved_chat_template(run) if run else (None, None)
    if not saved:
        return {"matches": [], "closest": [], "source": None}
    base_tok = tokenizer_of(run, base)
    probes = {**CONVERSATIONS, **PROBES}
    renders, saved_ids = {}, {}
    for key, messages in probes.items():
        try:
            renders[key] = render(base_tok, saved, messages)
        except Exception as exc:  # noqa: BLE001 - e.g. a template that refuses a system turn
            say(f"the saved chat template cannot render {key}: {type(exc).__name__}: {exc}")
            continue
        saved_ids[key] = base_tok.encode(renders[key], add_special_tokens=False)
    if not saved_ids:
        return {"matches": [], "closest": [], "source": source, "unrenderable": True}
    everything = " ".join(renders.values())
    scores = []
    for name in sorted(TEMPLATES):
        if not all(p.strip() in everything for p in literal_pieces(TEMPLATES[name])):
            continue  # cannot produce these prompts: skip the expensive check
        tok = copy.deepcopy(base_tok)
        try:
            template = get_template_and_fix_tokenizer(tok, DataArguments(template=name))
            jinja = template._get_jinja_template(tok)
            ids = {key: lf_ids(template, tok, probes[key]) for key in saved_ids}
            texts = {key: render(tok, jinja, probes[key]) for key in renders}
        except Exception as exc:  # noqa: BLE001 - a template this tokenizer cannot render is no candidate
            say(f"{name}: {type(exc).__name__}: {exc}")
            continue
        same_ids = sum(ids[k] == saved_ids[k] for k in saved_ids)
        same_text = sum(texts[k] == renders[k] for k in renders)
        diffs = {k: first_difference(ids[k], saved_ids[k]) for k in saved_ids}
        worst = next(((k, d) for k, d in diffs.items() if d is not None), None)
        where = None
        if worst:
            k, d = worst
            where = {"conversation": k, "token": d, "template": piece(tok, ids[k], d),
                     "saved": piece(base_tok, saved_ids[k], d)}
        scores.append({"name": name, "exact": jinja.strip() == saved.strip(), "ids": same_ids == len(saved_ids),
                       "text": same_text == len(renders) and len(renders) > 0, "same": same_ids,
                       "agree": sum(diffs[k] if diffs[k] is not None else len(saved_ids[k]) for k in diffs),
                       "first_difference": where})
    matches = [s for s in scores if s["exact"] or s["ids"] or s["text"]]
    matches.sort(key=lambda s: (not s["exact"], not s["ids"], len(s["name"]), s["name"]))
    closest = sorted(scores, key=lambda s: (-s["same"], -s["agree"], len(s["name"])))[:3]
    return {"matches": [s["name"] for s in matches],
            "how": {s["name"]: "exact" if s["exact"] else "ids" if s["ids"] else "text" for s in matches},
            "closest": [[s["name"], s["first_difference"]] for s in closest], "source": source,
            "conversations": len(saved_ids)}


def elements(formatter, tok, placeholder):
    """A formatter's slots as ("text", go-template) / ("special", token) elements, as LLaMA-Factory encodes
    them: each text slot is tokenized on its own."""
    out = []
    for slot in formatter.apply():
        if isinstance(slot, str):
            if slot:
                out.append(("text", slot.replace("{{content}}", "{{ " + placeholder + " }}")))
        elif isinstance(slot, set):
            name = "bos_token" if "bos_token" in slot else "eos_token" if "eos_token" in slot else None
            token = getattr(tok, name, None) if name else None
            if token:
                out.append(("special", token))
        elif isinstance(slot, dict):
            raise ValueError("Dict slots are not supported.")
    return split_specials(out, special_tokens(tok))


def special_tokens(tok):
    """The tokenizer's special tokens, longest first: llama.cpp parses them out of the prompt text."""
    found = set(tok.all_special_tokens)
    found.update(t.content for t in getattr(tok, "added_tokens_decoder", {}).values() if getattr(t, "special", False))
    return sorted((t for t in found if t), key=len, reverse=True)


def split_specials(elems, specials):
    """A special token written inside a text slot is a special element of its own: llama.cpp adds the '▁'
    after it by itself, so no space is written there (`join`)."""
    if not specials:
        return elems
    pattern = re.compile("(" + "|".join(re.escape(t) for t in specials) + ")")
    out = []
    for kind, value in elems:
        if kind != "text":
            out.append((kind, value))
            continue
        for part in pattern.split(value):
            if part:
                out.append(("special" if part in specials else "text", part))
    return out


def adds_space_per_segment(tok):
    """SentencePiece tokenizers (add_dummy_prefix) start every separately encoded text with '▁'."""
    pieces = tok.convert_ids_to_tokens(tok.encode("a", add_special_tokens=False))
    return bool(pieces) and pieces[0].startswith("\u2581")


def join(elems, after_text, spm):
    """Go-template text of `elems`. With a SentencePiece tokenizer, a text element that follows text gets a
    leading space: llama.cpp adds the '▁' only at the start and after special tokens, LLaMA-Factory to
    every element it encodes."""
    out = []
    for kind, value in elems:
        out.append((" " if spm and kind == "text" and after_text else "") + value)
        after_text = kind == "text"
    return "".join(out)


def ends_with_text(elems, default=False):
    return elems[-1][0] == "text" if elems else default


def ollama_template(template, tok, adds_bos):
    """An Ollama template that renders exactly the prompt LLaMA-Factory built at training: no second BOS
    where the runtime adds one, the system folded into the first user turn for Llama-2-style templates,
    and the spaces a SentencePiece tokenizer put at each element LLaMA-Factory encoded separately."""
    from llamafactory.data.template import Llama2Template

    spm = adds_space_per_segment(tok)
    bos = tok.bos_token or ""
    prefix = elements(template.format_prefix, tok, ".Content")
    if adds_bos and prefix and prefix[0] == ("special", bos):
        prefix = prefix[1:]
    user = elements(template.format_user, tok, "$m.Content")
    assistant = elements(template.format_assistant, tok, "$m.Content")
    after_assistant = join(user, ends_with_text(assistant), spm)
    is_first = '(or (eq $i 0) (and (eq $i 1) (eq (index $.Messages 0).Role "system")))'
    if isinstance(template, Llama2Template):
        first = list(user)
        if adds_bos and first and first[0] == ("special", bos):
            first = first[1:]
        system_text = join(elements(template.format_system, tok, "$.System"), False, False)
        first_text = join(first, ends_with_text(prefix), spm)
        first_text = first_text.replace("{{ $m.Content }}", "{{ if $.System }}" + system_text + "{{ end }}{{ $m.Content }}")
        user_turn = "{{ if " + is_first + " }}" + first_text + "{{ else }}" + after_assistant + "{{ end }}"
        body = ""
    else:
        system = elements(template.format_system, tok, ".System")
        after_system = join(user, ends_with_text(system), spm)
        after_prefix = join(user, ends_with_text(prefix), spm)
        user_turn = ("{{ if " + is_first + " }}{{ if $.System }}" + after_system + "{{ else }}" + after_prefix +
                     "{{ end }}{{ else }}" + after_assistant + "{{ end }}")
        body = "{{ if .System }}" + join(system, ends_with_text(prefix), spm) + "{{ end }}"
    turn = ('{{ if eq $m.Role "user" }}' + user_turn + '{{ else if eq $m.Role "assistant" }}' +
            join(assistant, ends_with_text(user), spm) + "{{ end }}")
    return join(prefix, False, spm) + body + "{{ range $i, $m := .Messages }}" + turn + "{{ end }}"


def chat_format(folders, name):
    from llamafactory.data import get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    tok = tokenizer_of(*folders)
    template = get_template_and_fix_tokenizer(tok, DataArguments(template=name))
    conversations = {}
    for key, messages in CONVERSATIONS.items():
        ids = lf_prompt_ids(template, tok, messages)
        conversations[key] = {"messages": messages, "train_ids": ids, "train_tokens": len(ids),
                              "train_prompt": tok.decode(ids, skip_special_tokens=False)}
    stops = [tok.convert_ids_to_tokens(i) for i in template.get_stop_token_ids(tok)]
    return {"template": name, "ollama_template": {"bos": ollama_template(template, tok, True),
                                                  "nobos": ollama_template(template, tok, False)},
            "lf_ollama_template": template._get_ollama_template(tok), "stops": sorted(set(stops)),
            "system": template.default_system or "", "bos_token": tok.bos_token or "",
            "bos_id": tok.bos_token_id,
            "conversations": conversations}


def prepare(run, base, template, mode):
    inference = infer(run, base) if mode in ("infer", "check") else None
    name = template or ((inference or {}).get("matches") or [None])[0]
    chat = None
    if name:
        try:
            chat = chat_format((run, base), name)
        except Exception as exc:  # noqa: BLE001 - said in one line; the export decides what it means
            chat = {"error": f"{type(exc).__name__}: {exc}"}
    answer({"inference": inference, "chat": chat})


if __name__ == "__main__":
    command, args = sys.argv[1], sys.argv[2:]
    if command != "prepare":
        raise SystemExit(f"unknown command {command}")
    prepare(*args)
