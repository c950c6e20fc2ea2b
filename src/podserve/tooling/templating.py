"""Jinja for manifests: undefined names fail, and every value reaches YAML quoted by `q`.

`q` writes a value as JSON (valid YAML, so strings such as "no", "1.0" or "y" stay strings).
The environment's finalize step refuses any `{{ ... }}` whose value did not pass through
`q`, so a template cannot paste a raw value by mistake. Rendered text is parsed back with
a loader that rejects duplicate keys, and the documents are returned for checking.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path

import jinja2
import yaml


class TemplateError(Exception):
    """A template could not be rendered or parsed back; the message names the template."""


class Quoted(str):
    """Text `q` produced: safe to place anywhere a YAML value goes."""


def quote(value) -> Quoted:
    """Return `value` as JSON text, keys sorted (the `q` filter).

    Two JSON spellings read differently in YAML 1.1 are rewritten: a character beyond
    U+FFFF (a surrogate pair in JSON, refused by YAML) becomes YAML's \\U escape, and an
    exponent without a dot (1e-05, read as a string) gets one (1.0e-05).
    """
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=True, allow_nan=False, default=_refuse)
    except (TypeError, ValueError) as exc:
        raise jinja2.TemplateError(f"{value!r} cannot be written to YAML: {exc}") from None
    return Quoted(_EXPONENT.sub(_dotted, _SURROGATE_PAIR.sub(_astral, text)))


_SURROGATE_PAIR = re.compile(r"(?<!\\)((?:\\\\)*)\\u(d[89ab][0-9a-f]{2})\\u(d[c-f][0-9a-f]{2})")


def _astral(match: re.Match) -> str:
    high, low = int(match.group(2), 16), int(match.group(3), 16)
    return match.group(1) + "\\U%08x" % (0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))


#: A JSON string or number: strings are left alone, numbers with an exponent get a dotted mantissa.
_EXPONENT = re.compile(r'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')


def _dotted(match: re.Match) -> str:
    token = match.group(0)
    if token.startswith('"') or "." in token or "e" not in token:
        return token
    mantissa, exponent = token.split("e")
    return f"{mantissa}.0e{exponent}"


def _refuse(value):
    if isinstance(value, jinja2.Undefined):
        str(value)  # raises UndefinedError naming the missing value
    raise TypeError(f"{type(value).__name__} is not JSON; convert it first")


def _finalize(value):
    if isinstance(value, Quoted):
        return value
    raise jinja2.TemplateError(f"{value!r} reached the YAML without `| q`; write {{{{ ... | q }}}}")


def default_templates_dir() -> Path:
    """Return the repository's templates/ (beside src/)."""
    return Path(__file__).resolve().parents[3] / "templates"


@functools.lru_cache(maxsize=8)
def environment(folder: Path) -> jinja2.Environment:
    """Return the Jinja environment for the templates in `folder` (one per folder, templates compiled once)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(folder)), undefined=jinja2.StrictUndefined,
                             finalize=_finalize, autoescape=False, keep_trailing_newline=True)
    env.filters["q"] = quote
    return env


def render_documents(env: jinja2.Environment, name: str, context: dict) -> list[dict]:
    """Render template `name` and return the YAML documents it produced (none is allowed)."""
    try:
        text = env.get_template(name).render(**context)
    except jinja2.TemplateError as exc:
        raise TemplateError(f"templates/{name}: {exc}") from exc
    try:
        docs = list(yaml.load_all(text, Loader=_StrictLoader))
    except yaml.YAMLError as exc:
        raise TemplateError(f"templates/{name} rendered text that is not valid YAML: {exc}") from exc
    docs = [doc for doc in docs if doc is not None]
    for doc in docs:
        if not isinstance(doc, dict):
            raise TemplateError(f"templates/{name} rendered a {type(doc).__name__}, not a Kubernetes object")
    return docs


class _StrictLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)
