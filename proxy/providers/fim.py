"""Fill-in-the-middle on servers that do not take ``suffix``: the prompt rendered in the model's
own FIM tokens, sent as a plain completion.

vLLM refuses ``suffix`` for most models and llama.cpp's ``/v1/completions`` ignores or refuses
it, but both complete a prompt that already holds the FIM tokens the model was trained on.
Ollama takes ``suffix`` natively (its deployments name no template). Which template a
deployment needs is a catalog fact (``fim_template``); this module only renders it.
"""

from __future__ import annotations

from typing import Any

from .base import UnsupportedFeatureError

# Each model family's infilling format, as its model card gives it (prefix-suffix-middle).
TEMPLATES: dict[str, str] = {
    "qwen2.5-coder": "<|fim_prefix|>{prefix}<|fim_suffix|>{suffix}<|fim_middle|>",
    "starcoder2": "<fim_prefix>{prefix}<fim_suffix>{suffix}<fim_middle>",
    "codellama": "<PRE> {prefix} <SUF>{suffix} <MID>",
    # DeepSeek's tokens use FULLWIDTH VERTICAL LINE (U+FF5C) and LOWER ONE EIGHTH BLOCK.
    "deepseek-coder": "<\uff5cfim\u2581begin\uff5c>{prefix}<\uff5cfim\u2581hole\uff5c>{suffix}"
    "<\uff5cfim\u2581end\uff5c>",
    "codestral": "[SUFFIX]{suffix}[PREFIX]{prefix}",
}


def single_prompt(body: dict[str, Any], wire: str) -> str:
    """The request's one prompt string (OpenAI also allows a list, or token ids)."""
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise UnsupportedFeatureError("prompt", f"{wire} takes exactly one prompt string")
    return prompt


def render(template: str, body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``prompt`` + ``suffix`` rendered into one prompt in ``template``'s tokens
    and ``suffix`` removed. A body without a suffix is still infilled (an empty suffix), so a
    deployment answers a prefix-only request the same way it answers the rest."""
    fmt = TEMPLATES[template]
    suffix = body.get("suffix") or ""
    prompt = single_prompt(body, f"the {template} FIM template")
    out = {k: v for k, v in body.items() if k != "suffix"}
    out["prompt"] = fmt.format(prefix=prompt, suffix=suffix)
    return out
