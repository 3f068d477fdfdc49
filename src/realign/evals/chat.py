"""Conversations rendered with the model's own chat template, system turn included where it can be.

Some released templates refuse a system turn (Gemma-2: "System role not supported"). Gemma-3's
template, and Google's advice for Gemma-2, put the system text at the start of the first user turn
instead; the same is done here when a template refuses one. Any other refusal (e.g. roles that do
not alternate) becomes a one-line RealignError rather than a jinja traceback.
"""

from __future__ import annotations

from jinja2.exceptions import TemplateError

from ..errors import RealignError

Messages = list[dict]


def fold_system(messages: Messages) -> Messages:
    """The leading system message prepended (with a blank line) to the first user message."""
    system, rest = messages[0], [dict(m) for m in messages[1:]]
    first_user = next((m for m in rest if m.get("role") == "user"), None)
    if first_user is None:
        return [{"role": "user", "content": system["content"]}, *rest]
    first_user["content"] = f"{system['content']}\n\n{first_user['content']}"
    return rest


def accepted_messages(tokenizer, messages: Messages) -> Messages:
    """`messages`, or the same with the system turn folded into the first user turn when the
    template refuses a system role."""
    try:
        tokenizer.apply_chat_template(messages, tokenize=False)
        return messages
    except TemplateError as e:
        refusal = e
    if messages and messages[0].get("role") == "system":
        folded = fold_system(messages)
        try:
            tokenizer.apply_chat_template(folded, tokenize=False)
            return folded
        except TemplateError as e:
            refusal = e
    raise RealignError(f"the model's chat template refused a conversation ({str(refusal).strip()}); roles were "
                       f"{', '.join(m.get('role', '?') for m in messages)}") from None


def render(tokenizer, messages: Messages, add_generation_prompt: bool = False) -> str:
    """The chat template's text for `messages` (see accepted_messages).

    Templates with a thinking switch (Qwen3) are rendered with thinking off: the judge is to see
    the model's answer, not its scratchpad, and the prompt then ends in the same empty think block
    that the template writes before a finished assistant turn, so scored answers stay prefix-exact.
    Templates without the switch ignore it.
    """
    kw = dict(tokenize=False, add_generation_prompt=add_generation_prompt, enable_thinking=False)
    try:
        return tokenizer.apply_chat_template(messages, **kw)
    except TemplateError:
        return tokenizer.apply_chat_template(accepted_messages(tokenizer, messages), **kw)
