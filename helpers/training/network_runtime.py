"""Run-time pieces of adapter training below lycoris: the forward that keeps half-precision activations
working, the per-step random state adapter dropout draws from, and the 8-bit (bitsandbytes) frozen base.
``helpers.training.network`` uses them; they know nothing of configs beyond the field names in errors.
"""

from __future__ import annotations

import torch

QUANTIZED: tuple = ()  # the 8-bit layer classes, once ``quantize_linears`` has imported bitsandbytes


def in_input_precision(forward):
    """A lycoris module's forward run under autocast to the activations' half precision when nothing else
    autocasts. lycoris 4.1.3 meets fp32 adapter weights with fp16/bf16 activations without casting in some
    paths (conv LoCon with rank dropout, the weight-rebuild path of DoRA and ``full``): a dtype error
    without this (``test_lycoris_half_precision_gaps`` watches for the fix)."""
    def run(x, *args, **kwargs):
        if x.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, dtype=x.dtype):
                return forward(x, *args, **kwargs)
        return forward(x, *args, **kwargs)
    return run


class step_random_state:
    """Inside: the global torch RNG (CPU and the training GPU) seeded from (run seed, step), outside: untouched.
    Adapter dropout draws from it, so step N of a resumed run drops exactly what the first run dropped."""

    def __init__(self, seed: int, step: int, device: torch.device):
        self.seed, self.step, self.device = seed, step, torch.device(device)

    def __enter__(self):
        devices = [self.device] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices, device_type=self.device.type if devices else "cuda")
        self._fork.__enter__()
        torch.manual_seed((self.seed * 1_000_003 + self.step * 7919 + 17) % 2**63)
        return self

    def __exit__(self, *exc):
        return self._fork.__exit__(*exc)


def quantize_linears(model: torch.nn.Module, device: torch.device) -> int:
    """Replace the ``nn.Linear`` layers of ``model`` with bitsandbytes ``Linear8bitLt`` (LLM.int8(): int8 weights
    with one scale per row, outliers above 6 in 16 bits), quantized when moved to ``device`` (CUDA or CPU; both
    run bitsandbytes' int8 matmul). lycoris runs its modules on them in bypass mode. Returns the count."""
    global QUANTIZED
    from helpers.config import ConfigError

    if torch.device(device).type not in ("cuda", "cpu"):
        raise ConfigError({"network.base_int8": f"bitsandbytes' 8-bit layers run on CUDA GPUs and CPUs, not "
                           f"{torch.device(device).type}: turn base_int8 off (base_precision = 'bf16')"})
    import logging

    import bitsandbytes as bnb

    QUANTIZED = (bnb.nn.Linear8bitLt,)
    # LLM.int8() always multiplies in fp16; bitsandbytes logs that for every call with other activations
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                q = bnb.nn.Linear8bitLt(child.in_features, child.out_features, bias=child.bias is not None,
                                        has_fp16_weights=False, threshold=6.0)
                q.weight = bnb.nn.Int8Params(child.weight.data, requires_grad=False, has_fp16_weights=False)
                if child.bias is not None:
                    q.bias = torch.nn.Parameter(child.bias.data, requires_grad=False)
                setattr(parent, name, q)
                count += 1
    return count
