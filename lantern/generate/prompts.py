"""Prompts: a string or a list of messages to token ids, through the model's chat template or as
raw text."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from ..errors import LanternError


def messages_for(prompt: str, system: str | None = None) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return messages


def encode_chat(model, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True,
                **template_options: Any) -> list[int]:
    """Token ids of a conversation rendered with the model's chat template."""
    return encode_conversation(model.tokenizer, model.chat_template, messages, add_generation_prompt,
                               **template_options)


def encode_conversation(tokenizer, template, messages: Sequence[Mapping[str, Any]],
                        add_generation_prompt: bool = True, **template_options: Any) -> list[int]:
    """Render `messages` with `template` and tokenize the text. `template_options` are variables
    the template reads besides the messages (Qwen3's `enable_thinking`, as HF's
    `apply_chat_template` passes them).

    Special tokens in the rendered text are parsed as such. BOS is added as the file says
    (`tokenizer.ggml.add_bos_token`, as llama.cpp does), except when the template already
    wrote it: never two BOS tokens.
    """
    text = template.render(messages, add_generation_prompt=add_generation_prompt, **template_options)
    add_bos = False if template.bos_token and text.startswith(template.bos_token) else None
    return list(tokenizer.encode(text, add_bos=add_bos, special=True))


def checked_template_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """`options` as a dict of template variables, or LanternError for names lantern sets itself."""
    if options is None:
        return {}
    if not isinstance(options, Mapping) or not all(isinstance(k, str) for k in options):
        raise LanternError("template options must be a mapping of names to values, e.g. {\"enable_thinking\": false}")
    reserved = sorted({"messages", "add_generation_prompt", "tools"} & set(options))
    if reserved:
        raise LanternError(f"template option {reserved[0]!r} is set by lantern itself; leave it out")
    return dict(options)


def prompt_ids_for(model, prompt_or_messages, *, chat: bool = True, system: str | None = None,
                   template_options: Mapping[str, Any] | None = None) -> list[int]:
    """The prompt token ids for a string (chat: one user message; raw text otherwise) or a list
    of message dicts (always chat); `template_options`: see `encode_conversation`."""
    options = checked_template_options(template_options)
    if options and not chat:
        raise LanternError("template options need chat mode; drop --no-chat or the options")
    if isinstance(prompt_or_messages, str):
        if not prompt_or_messages.strip():
            raise LanternError("the prompt is empty; give some text")
        if not chat:
            if system:
                raise LanternError("a system message needs chat mode; drop --no-chat or --system")
            ids = list(model.tokenizer.encode(prompt_or_messages, add_bos=None, special=True))
        else:
            ids = encode_chat(model, messages_for(prompt_or_messages, system), **options)
    else:
        if not chat:
            raise LanternError("a list of messages needs chat mode; pass a string for raw text")
        messages = list(prompt_or_messages)
        if system:
            messages = messages_for("", system)[:1] + messages
        ids = encode_chat(model, messages, **options)
    if not ids:
        raise LanternError("the prompt is empty; give some text")
    return ids
