"""The part of Go's text/template that Ollama chat templates use: TuneDeck renders a served prompt the way
Ollama will (to compare its token ids with training's before any model is created), and so does the
Ollama stand-in of the tests.

Actions `{{ }}` with `{{-`/`-}}` trimming; `if`/`else if`/`else`/`end`; `range PIPE`,
`range $m := PIPE`, `range $i, $m := PIPE`; fields `.X`, `$.X`, `$v`, `$v.X`, `(expr).X`; string and
integer literals; calls `eq ne lt le gt ge and or not len index slice` with parentheses.
Truthiness and printing follow Go (empty string/list, 0, false and nil are false).
Anything else raises TemplateError, as Ollama refuses a template it cannot parse.
"""

from __future__ import annotations

import re

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|`[^`]*`|\(|\)|:=|,|-?\d+|\$?[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_]\w*)*'
                    r'|\$(?:\.[A-Za-z_]\w*)*|\.(?:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)?)')
FUNCS = {"eq", "ne", "lt", "le", "gt", "ge", "and", "or", "not", "len", "index", "slice"}


class TemplateError(ValueError):
    pass


def _lex(expr: str) -> list[str]:
    out, pos = [], 0
    expr = expr.strip()
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m or m.end() == pos:
            raise TemplateError(f"unexpected {expr[pos:pos + 20]!r} in {expr!r}")
        out.append(m.group(1))
        pos = m.end()
        while pos < len(expr) and expr[pos].isspace():
            pos += 1
    return out


def _parse_expr(tokens: list[str], pos: int = 0, stop: str | None = None):
    """A pipeline: one operand, or a function applied to operands. Returns (node, next position)."""
    items = []
    while pos < len(tokens) and tokens[pos] != stop:
        tok = tokens[pos]
        if tok == "(":
            node, pos = _parse_expr(tokens, pos + 1, ")")
            if pos >= len(tokens):
                raise TemplateError("unclosed parenthesis")
            pos += 1
            if pos < len(tokens) and tokens[pos].startswith(".") and tokens[pos] != ".":  # (expr).Field
                node = ("field", node, tokens[pos][1:])
                pos += 1
            items.append(node)
        elif tok == ")":
            raise TemplateError("unexpected )")
        else:
            items.append(("lit", _literal(tok)) if tok[0] in '"`-0123456789' else ("ref", tok))
            pos += 1
    if not items:
        raise TemplateError("empty expression")
    head = items[0]
    if head[0] == "ref" and head[1] in FUNCS:
        return ("call", head[1], items[1:]), pos
    if len(items) > 1:
        raise TemplateError(f"cannot call {head!r}")
    return head, pos


def _literal(tok: str):
    if tok[0] == '"':
        return bytes(tok[1:-1], "utf-8").decode("unicode_escape").encode("latin-1").decode("utf-8")
    if tok[0] == "`":
        return tok[1:-1]
    return int(tok)


def parse(template: str) -> list:
    """Parse into a tree; raises TemplateError on anything unsupported or unbalanced."""
    root: list = []
    stack: list = [("root", root)]
    pos = 0
    pieces: list = []
    for m in _ACTION.finditer(template):
        pieces.append(["text", template[pos:m.start()]])
        pieces.append(["action", m.group(2).strip(), bool(m.group(1)), bool(m.group(3))])
        pos = m.end()
    pieces.append(["text", template[pos:]])
    for i, p in enumerate(pieces):  # trim markers eat the whitespace of their neighbour text
        if p[0] == "action":
            if p[2] and i > 0:
                pieces[i - 1][1] = pieces[i - 1][1].rstrip()
            if p[3] and i + 1 < len(pieces):
                pieces[i + 1][1] = pieces[i + 1][1].lstrip()
    cur = root
    for p in pieces:
        if p[0] == "text":
            if p[1]:
                cur.append(("text", p[1]))
            continue
        action = p[1]
        if action.startswith("/*"):
            continue
        if action.startswith("if "):
            node = {"kind": "if", "branches": [(_parse_expr(_lex(action[3:]))[0], [])], "else": None}
            cur.append(node)
            stack.append(("if", node))
            cur = node["branches"][0][1]
        elif action.startswith("else if "):
            kind, node = stack[-1]
            if kind != "if" or node["else"] is not None:
                raise TemplateError("else if outside if")
            node["branches"].append((_parse_expr(_lex(action[8:]))[0], []))
            cur = node["branches"][-1][1]
        elif action == "else":
            kind, node = stack[-1]
            if kind not in ("if", "range") or node["else"] is not None:
                raise TemplateError("else outside if/range")
            node["else"] = []
            cur = node["else"]
        elif action.startswith("range "):
            tokens = _lex(action[6:])
            names = []
            if ":=" in tokens:
                split = tokens.index(":=")
                names = [t for t in tokens[:split] if t != ","]
                tokens = tokens[split + 1:]
            node = {"kind": "range", "vars": names, "expr": _parse_expr(tokens)[0], "body": [], "else": None}
            cur.append(node)
            stack.append(("range", node))
            cur = node["body"]
        elif action == "end":
            if len(stack) == 1:
                raise TemplateError("unexpected end")
            stack.pop()
            kind, node = stack[-1]
            cur = node if kind == "root" else _open_body(kind, node)
        else:
            cur.append(("expr", _parse_expr(_lex(action))[0]))
    if len(stack) != 1:
        raise TemplateError("missing end")
    return root


def _open_body(kind, node):
    if kind == "range":
        return node["else"] if node["else"] is not None else node["body"]
    return node["else"] if node["else"] is not None else node["branches"][-1][1]


def truthy(value) -> bool:
    return bool(value) if value is not None else False


def _field(value, name: str):
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)


def _resolve(ref: str, dot, root, env: dict):
    if ref == ".":
        return dot
    if ref.startswith("$"):
        head, _, rest = ref.partition(".")
        value = root if head == "$" else env.get(head)
        if head != "$" and head not in env:
            raise TemplateError(f"undefined variable {head}")
    else:
        value, rest = dot, ref[1:]
    for part in filter(None, rest.split(".")):
        value = _field(value, part)
    return value


def _eval(node, dot, root, env):
    kind = node[0]
    if kind == "lit":
        return node[1]
    if kind == "ref":
        return _resolve(node[1], dot, root, env)
    if kind == "field":
        value = _eval(node[1], dot, root, env)
        for part in node[2].split("."):
            value = _field(value, part)
        return value
    name, args = node[1], node[2]
    if name in ("and", "or"):
        value = None
        for a in args:
            value = _eval(a, dot, root, env)
            if truthy(value) != (name == "and"):
                return value
        return value
    vals = [_eval(a, dot, root, env) for a in args]
    if name == "not":
        return not truthy(vals[0])
    if name == "eq":
        return any(vals[0] == v for v in vals[1:])
    if name == "ne":
        return vals[0] != vals[1]
    if name in ("lt", "le", "gt", "ge"):
        a, b = vals
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[name]
    if name == "len":
        return len(vals[0] or [])
    if name == "index":
        value = vals[0]
        for i in vals[1:]:
            value = value[i]
        return value
    if name == "slice":
        seq = vals[0]
        return seq[vals[1]:vals[2]] if len(vals) > 2 else seq[vals[1]:]
    raise TemplateError(f"unknown function {name}")


def _show(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _render(nodes, dot, root, env, out: list) -> None:
    for n in nodes:
        if isinstance(n, tuple):
            out.append(n[1] if n[0] == "text" else _show(_eval(n[1], dot, root, env)))
        elif n["kind"] == "if":
            for cond, body in n["branches"]:
                if truthy(_eval(cond, dot, root, env)):
                    _render(body, dot, root, env, out)
                    break
            else:
                if n["else"] is not None:
                    _render(n["else"], dot, root, env, out)
        else:
            items = _eval(n["expr"], dot, root, env) or []
            if not items and n["else"] is not None:
                _render(n["else"], dot, root, env, out)
            for i, item in enumerate(items):
                scope = dict(env)
                if len(n["vars"]) == 1:
                    scope[n["vars"][0]] = item
                elif len(n["vars"]) == 2:
                    scope[n["vars"][0]], scope[n["vars"][1]] = i, item
                _render(n["body"], item, root, scope, out)


def render(template: str, data: dict) -> str:
    tree = parse(template)
    out: list[str] = []
    _render(tree, data, data, {}, out)
    return "".join(out)
