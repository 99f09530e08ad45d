# Templates, asked of LLaMA-Factory itself, in one process (importing it takes seconds):
#   prepare RUN BASE TEMPLATE MODE   MODE infer: which template the run's saved chat template is, then its
#                                    chat format; check: the same for a TEMPLATE chosen by hand; given: the
#                                    chat format of TEMPLATE. The chat format: training-time prompts of two
#                                    conversations, the stop tokens, and Ollama templates reproducing them
#                                    (for a runtime that adds BOS itself, and for one that does not).
import copy
import difflib
import json
import os
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
    return tokenizer.apply_chat_template(messages, tokenize=False, chat_template=jinja, add_generation_prompt=True)


def infer(run, base):
    """Which LLaMA-Factory template wrote (or would render like) the chat template the run saved.

    LLaMA-Factory saves its own Jinja for a template when the base model has none, so an exact match
    names it; an instruct model keeps its own Jinja, which matches the template rendering the same text."""
    from llamafactory.data import TEMPLATES, get_template_and_fix_tokenizer
    from llamafactory.hparams import DataArguments

    saved, source = saved_chat_template(run) if run else (None, None)
    if not saved:
        return {"matches": [], "closest": [], "source": None}
    base_tok = tokenizer_of(run, base)
    renders = {key: render(base_tok, saved, messages) for key, messages in CONVERSATIONS.items()}
    everything = " ".join(renders.values())
    scores = []
    for name in sorted(TEMPLATES):
        if not all(piece.strip() in everything for piece in literal_pieces(TEMPLATES[name])):
            continue  # cannot produce these prompts: skip the expensive check
        tok = copy.deepcopy(base_tok)
        try:
            template = get_template_and_fix_tokenizer(tok, DataArguments(template=name))
            jinja = template._get_jinja_template(tok)
            ours = {key: render(tok, jinja, messages) for key, messages in CONVERSATIONS.items()}
        except Exception as exc:  # noqa: BLE001 - a template this tokenizer cannot render is no candidate
            say(f"{name}: {type(exc).__name__}: {exc}")
            continue
        same = sum(ours[k] == renders[k] for k in renders)
        ratio = sum(difflib.SequenceMatcher(None, ours[k], renders[k]).ratio() for k in renders) / len(renders)
        scores.append((name, jinja.strip() == saved.strip(), same, round(ratio, 4)))
    matches = [s for s in scores if s[1] or s[2] == len(CONVERSATIONS)]
    matches.sort(key=lambda s: (not s[1], len(s[0]), s[0]))
    closest = sorted(scores, key=lambda s: (-s[2], -s[3], len(s[0])))[:3]
    return {"matches": [s[0] for s in matches], "closest": [[s[0], s[3]] for s in closest], "source": source}


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
