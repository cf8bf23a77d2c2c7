"""Round trip of a component state through the bytes a checkpoint would hold."""

import json

from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from grokinterp.training.state import join_state, split_state


def roundtrip(state):
    """Serialise ``state`` to safetensors and JSON bytes, then read it back."""
    tensors, plain = split_state(state)
    tensor_bytes = save_safetensors(tensors)
    plain_text = json.dumps(plain)
    return join_state(load_safetensors(tensor_bytes), json.loads(plain_text))
