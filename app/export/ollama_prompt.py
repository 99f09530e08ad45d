"""The prompt Ollama builds for a chat request from a model's template and default system (its
`collate` and template data), so TuneDeck can tokenize a served prompt before the model exists."""

from __future__ import annotations

from .gotemplate import render


def collate(messages: list[dict]) -> tuple[str, list[dict]]:
    """Ollama's `collate`: system messages joined into .System, consecutive same-role messages merged."""
    system, out = [], []
    for m in messages:
        role, content = str(m.get("role", "")).lower(), str(m.get("content", ""))
        if role == "system":
            system.append(content)
        if out and out[-1]["Role"] == role and role != "tool":
            out[-1]["Content"] += "\n\n" + content
        else:
            out.append({"Role": role, "Content": content})
    return "\n\n".join(system), out


def chat_prompt(spec: dict, messages: list[dict]) -> str:
    """The text Ollama feeds the model for a chat request; `spec` holds the create request's
    `template` and `system`."""
    messages = list(messages)
    if spec.get("system") and (not messages or messages[0].get("role") != "system"):
        messages.insert(0, {"role": "system", "content": spec["system"]})
    system, collated = collate(messages)
    template = spec.get("template") or "{{ .Prompt }}"
    if ".Messages" not in template:  # legacy templates see only the last prompt
        prompt = next((m["Content"] for m in reversed(collated) if m["Role"] == "user"), "")
        return render(template, {"System": system, "Prompt": prompt, "Response": ""})
    return render(template, {"System": system, "Messages": collated, "Response": ""})
