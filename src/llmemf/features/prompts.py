"""The paper's LLM prompt (section 3.3) and how an item fills it.

The template is a config field (``EnrichConfig.template``); it is a ``str.format`` string that may use
``{domain}``, ``{title}``, ``{description}`` and ``{description_sentence}`` (the description as a
sentence, or empty when the item has none, so one template serves items with and without it).
"""

from __future__ import annotations

import re

# The paper's words, with the item's description added when it has one (METHOD.md, "LLM text").
PAPER_TEMPLATE = (
    "Generate additional contextual information for an item which is type of {domain} with {title}.{description_sentence} "
    "Provide detailed insights and keywords about the item's features. The output should include specific attributes, "
    "and potential users that could enhance the understanding of the item in a cross-domain recommendation context."
)

MAX_DESCRIPTION_CHARS = 600  # long descriptions are cut (at a word boundary) so prompts stay cheap


def _clean(text: object) -> str:
    if text is None or (isinstance(text, float) and text != text):  # None or NaN from pandas
        return ""
    return re.sub(r"\s+", " ", str(text)).strip()


def render_prompt(template: str, domain: str, title: object, description: object = None) -> str:
    """Fill ``template`` for one item; missing fields become empty strings, never 'None'."""
    desc = _clean(description)
    if len(desc) > MAX_DESCRIPTION_CHARS:
        desc = desc[:MAX_DESCRIPTION_CHARS].rsplit(" ", 1)[0] + " ..."
    return template.format(
        domain=_clean(domain),
        title=_clean(title) or "an untitled item",
        description=desc,
        description_sentence=f" Its description: {desc}" if desc else "",
    )


_THINK = re.compile(r"<think>.*?</think>", flags=re.DOTALL | re.IGNORECASE)


def strip_reasoning(text: str | None) -> str:
    """Keep only the answer of a reasoning model: drop <think>...</think> blocks (and an unclosed
    leading one, which a truncated generation leaves), then trim."""
    if not text:
        return ""
    text = _THINK.sub("", text)
    if "<think>" in text.lower():  # opened but never closed: everything after it is reasoning
        text = text[: text.lower().index("<think>")]
    if "</think>" in text.lower():  # closed without an opening tag (the server ate it): keep what follows
        text = text[text.lower().rindex("</think>") + len("</think>") :]
    return text.strip()
