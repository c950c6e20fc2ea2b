"""Jinja for manifests: undefined names fail, and every value reaches YAML quoted by `q`.

`q` writes a value as JSON (valid YAML, so strings such as "no", "1.0" or "y" stay strings).
The environment's finalize step refuses any `{{ ... }}` whose value did not pass through
`q`, so a template cannot paste a raw value by mistake. Rendered text is parsed back with
a loader that rejects duplicate keys, and the documents are returned for checking.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import yaml


class TemplateError(Exception):
    """A template could not be rendered or parsed back; the message names the template."""


class Quoted(str):
    """Text `q` produced: safe to place anywhere a YAML value goes."""


def quote(value) -> Quoted:
    """Return `value` as JSON text, keys sorted (the `q` filter)."""
    return Quoted(json.dumps(value, sort_keys=True, ensure_ascii=True))


def _finalize(value):
    if isinstance(value, Quoted):
        return value
    raise jinja2.TemplateError(f"{value!r} reached the YAML without `| q`; write {{{{ ... | q }}}}")


def default_templates_dir() -> Path:
    """Return the repository's templates/ (beside src/)."""
    return Path(__file__).resolve().parents[3] / "templates"


def environment(folder: Path) -> jinja2.Environment:
    """Return the Jinja environment for the templates in `folder`."""
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


class _StrictLoader(yaml.SafeLoader):
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
