"""Reading and writing a transformer block's streams, whatever its signature: the image stream
(``hidden_states``) and, for double-stream blocks, the text stream, located through diffusers'
``TransformerBlockRegistry`` metadata (``meta``)."""

from __future__ import annotations

from typing import Any

import torch

Streams = tuple[torch.Tensor, torch.Tensor | None]


def block_inputs(meta, args: tuple, kwargs: dict) -> Streams:
    """The block's (image, text) inputs; the metadata names them (Z-Image's blocks call theirs `x`)."""
    hidden = meta._get_parameter_from_args_kwargs(meta.hidden_states_argument_name, args, kwargs)
    encoder = None
    if meta.return_encoder_hidden_states_index is not None:
        encoder = meta._get_parameter_from_args_kwargs(meta.encoder_hidden_states_argument_name, args, kwargs)
    return hidden, encoder


def block_outputs(output: Any, meta) -> Streams:
    """The (image, text) streams of a block's return value (one tensor, or a tuple of streams)."""
    if not isinstance(output, tuple):
        return output, None
    index = meta.return_encoder_hidden_states_index
    return output[meta.return_hidden_states_index], output[index] if index is not None else None


def pack_outputs(output: Any, meta, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
    """`output` with its streams replaced, in the block's own shape."""
    if not isinstance(output, tuple):
        return hidden
    out = list(output)
    out[meta.return_hidden_states_index] = hidden
    if meta.return_encoder_hidden_states_index is not None:
        out[meta.return_encoder_hidden_states_index] = encoder
    return tuple(out)


def skipped_outputs(meta, tuple_output: bool, hidden: torch.Tensor, encoder: torch.Tensor | None) -> Any:
    """A skipped block's return value, shaped like the block's own (one tensor, or a tuple of streams)."""
    if not tuple_output or meta.return_encoder_hidden_states_index is None:
        return hidden
    return pack_outputs((None, None), meta, hidden, encoder)


def sub(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return None if a is None or b is None else a - b


def add(a: torch.Tensor | None, b: torch.Tensor | None) -> torch.Tensor | None:
    return a if a is None or b is None else a + b
