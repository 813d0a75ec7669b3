"""Explicit conversion of a state dict from one storage format to another."""

import numpy as np

from numadam.formats import FORMATS, MIN_8BIT
from numadam.formats import codec

__all__ = ["convert_state_dict"]


def _signedness():
    """State array name -> whether it can be negative, from every rule's
    declaration (torch's names are unambiguous across the rules)."""
    from numadam.rules import adagrad, adam, rmsprop, sgd
    out = {}
    for rule in (adam.RULE, sgd.RULE, adagrad.RULE, rmsprop.RULE):
        for s in rule.state:
            out[s.name] = s.signed
    return out


def convert_state_dict(state_dict, state_format):
    """A copy of ``state_dict`` with its state stored as ``state_format``.

    Loading refuses a state dict of another format; this is the explicit
    conversion. Every state array is decoded to float32 and encoded again as
    the optimizer's kernels would store it: ``"full"`` gives float32 arrays,
    ``"bfloat16"`` uint16 bits rounded to nearest even, ``"8bit"`` codes and
    block absmax (arrays under ``MIN_8BIT`` elements stay float32, as an
    8-bit optimizer keeps them). Converting to a smaller format loses
    precision once; converting back does not recover it.

    Full state dicts of float64 parameters hold float64 arrays: converting
    them to a compressed format rounds them to float32 first; converting a
    compressed one to ``"full"`` gives float32, which an optimizer over
    float64 parameters refuses (compressed formats need float32 or bfloat16
    parameters anyway).

    Raises
    ------
    ValueError
        An unknown format, or a state dict whose arrays do not fit its
        declared format (the message names the entry).
    """
    if state_format not in FORMATS:
        raise ValueError(f"state_format must be one of {FORMATS}, got {state_format!r}")
    source = state_dict.get("state_format", "full")
    if source not in FORMATS:
        raise ValueError(f"state_dict['state_format'] must be one of {FORMATS}, got "
                         f"{source!r}")
    signed = _signedness()
    state = {}
    for pid, entry in state_dict["state"].items():
        out = {}
        for key, value in entry.items():
            if key == "step" or key.endswith("_absmax") or value is None:
                if key == "step" or value is None:
                    out[key] = value
                continue
            if key not in signed:
                raise ValueError(f"state[{pid!r}] has {key!r}, which no numadam rule keeps")
            values = _decoded(entry, key, source, signed[key], f"state[{pid!r}][{key!r}]")
            out.update(_encoded(values, key, state_format, signed[key]))
        state[pid] = out
    converted = {"state": state,
                 "param_groups": [dict(group) for group in state_dict["param_groups"]]}
    if state_format != "full":
        converted["state_format"] = state_format
    return converted


def _decoded(entry, key, source, is_signed, where):
    array = np.asarray(entry[key])
    absmax = entry.get(key + "_absmax")
    if array.dtype == np.uint16 and source == "bfloat16":
        return codec.bf16_values(array)
    if array.dtype == np.uint8 and source == "8bit":
        if absmax is None or np.asarray(absmax).shape != (codec.nblocks(array.size),):
            raise ValueError(f"{where} has 8-bit codes without a fitting {key}_absmax")
        return codec.decode8(array, absmax, is_signed)
    if array.dtype.kind == "f":
        return array
    raise ValueError(f"{where} has dtype {array.dtype}, which state_format={source!r} "
                     "does not store")


def _encoded(values, key, state_format, is_signed):
    if state_format == "bfloat16":
        return {key: codec.bf16_bits(values)}
    if state_format == "8bit" and values.size >= MIN_8BIT:
        codes, absmax = codec.encode8(values, is_signed)
        return {key: codes, key + "_absmax": absmax}
    if state_format == "full" and values.dtype == np.float64:
        return {key: values.copy()}
    return {key: np.array(values, np.float32)}
