"""Read the Ollama Modelfile LLaMA-Factory writes next to a merged model, and build /api/create."""

from __future__ import annotations

import json
import re

_DIRECTIVE = re.compile(r'^(FROM|TEMPLATE|SYSTEM|PARAMETER|ADAPTER|LICENSE|MESSAGE)\s+(.*)$', re.IGNORECASE)


def _unquote(rest: str, lines: list[str], i: int) -> tuple[str, int]:
    """Value of a directive: `\"\"\"multi-line\"\"\"`, `"quoted"` or bare; returns (value, next line)."""
    if rest.startswith('"""'):
        body = rest[3:]
        if '"""' in body:
            return body[: body.index('"""')], i + 1
        parts = [body]
        i += 1
        while i < len(lines):
            if '"""' in lines[i]:
                parts.append(lines[i][: lines[i].index('"""')])
                return "\n".join(parts), i + 1
            parts.append(lines[i])
            i += 1
        return "\n".join(parts), i
    if len(rest) >= 2 and rest[0] == rest[-1] == '"':
        return rest[1:-1].replace('\\"', '"'), i + 1
    return rest.strip(), i + 1


def parse_modelfile(text: str) -> dict:
    """{"template": str|None, "system": str|None, "parameters": {"stop": [...], ...}}."""
    out: dict = {"template": None, "system": None, "parameters": {}}
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].strip()
        match = _DIRECTIVE.match(line)
        if not match or line.startswith("#"):
            i += 1
            continue
        key, rest = match.group(1).upper(), match.group(2).strip()
        if key == "PARAMETER":
            name, _, value_text = rest.partition(" ")
            value, i = _unquote(value_text.strip(), lines, i)
            params = out["parameters"]
            if name == "stop":
                params.setdefault("stop", []).append(value)
            else:
                params[name] = _number(value)
            continue
        value, i = _unquote(rest, lines, i)
        if key in ("TEMPLATE", "SYSTEM"):
            out[key.lower()] = value
    return out


def _number(value: str):
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


def create_payload(model: str, digest: str, modelfile: dict, system_prompt: str) -> dict:
    """The /api/create body: the uploaded GGUF plus the training template, stops and system."""
    payload: dict = {"model": model, "files": {"model.gguf": digest}}
    if modelfile.get("template"):
        payload["template"] = modelfile["template"]
    system = system_prompt if system_prompt else modelfile.get("system")
    if system:
        payload["system"] = system
    if modelfile.get("parameters"):
        payload["parameters"] = dict(modelfile["parameters"])
    return payload


def render_modelfile(gguf_name: str, serving: dict, system_prompt: str = "") -> str:
    """An Ollama Modelfile for `ollama create -f` next to the GGUF (the same model TuneDeck creates)."""
    lines = ["# Ollama Modelfile written by TuneDeck (the chat format the model was trained with)", "",
             f"FROM ./{gguf_name}", ""]
    if serving.get("template"):
        lines += [f'TEMPLATE """{serving["template"]}"""', ""]
    system = system_prompt or serving.get("system")
    if system:
        lines += [f'SYSTEM """{system}"""', ""]
    for name, value in (serving.get("parameters") or {}).items():
        for v in value if isinstance(value, list) else [value]:
            lines.append(f"PARAMETER {name} {json.dumps(v) if isinstance(v, str) else v}")
    return "\n".join(lines) + "\n"
