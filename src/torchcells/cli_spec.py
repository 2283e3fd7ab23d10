"""Models named on the command line: the ``SPEC`` of ``torchcells explain SPEC`` (see :mod:`.cli`).

``SPEC`` is either a built-in description, ``NAME[:key=value,flag,...]``::

    lstm:input=10,hidden=20,layers=2,bidirectional      nn.LSTM (add ``torchcells`` for the drop-in)
    gru:input=8,hidden=16,batch_first                   nn.GRU
    rnn:input=8,hidden=16,relu,nobias                   nn.RNN
    mlp:input=784,hidden=128/64,output=10               Linear + ReLU layers
    cnn:channels=1,size=28,filters=8,kernel=3,classes=10  Conv2d, ReLU, MaxPool2d, Flatten, Linear

or ``package.module:factory``: ``factory()`` returns a module, or a pair ``(module,
example_input)``; a lone module needs ``--input-shape``. The current folder is on the import
path (as with ``python -m``); a module that fails to import, a factory that needs arguments or
raises, are each a ``ValueError`` in one line.
"""

from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable, Optional

import torch
from torch import nn

__all__ = ["GRAMMAR", "build", "parse"]

GRAMMAR = ("SPEC should be NAME[:key=value,flag,...] with NAME one of lstm, gru, rnn, mlp, cnn "
           "(e.g. lstm:input=10,hidden=20,layers=2,bidirectional), or package.module:factory")

_RNN_KEYS = {"input": 10, "hidden": 20, "layers": 1, "proj": 0}
_RNN_FLAGS = {"bidirectional", "batch_first", "nobias", "torchcells", "relu"}


def parse(spec: str) -> tuple[str, dict[str, str], set[str]]:
    """``"lstm:input=10,bidirectional"`` → ``("lstm", {"input": "10"}, {"bidirectional"})``."""
    name, _, rest = spec.partition(":")
    values: dict[str, str] = {}
    flags: set[str] = set()
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if eq:
            values[key.strip()] = value.strip()
        else:
            flags.add(key)
    return name.strip().lower(), values, flags


def _int(name: str, values: dict[str, str], key: str, default: int, *, minimum: int = 1) -> int:
    raw = values.get(key, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name}: {key} should be an integer, got {raw!r} ({GRAMMAR})") from None
    if value < minimum:
        raise ValueError(f"{name}: {key} should be at least {minimum}, got {value}")
    return value


def _check(name: str, values: dict[str, str], flags: set[str], keys: set[str], allowed: set[str]) -> None:
    unknown = sorted(set(values) - keys) + sorted(flags - allowed)
    if unknown:
        raise ValueError(f"{name}: unknown option(s) {', '.join(unknown)}; {name} takes "
                         f"{', '.join(sorted(keys))}=N and the flags {', '.join(sorted(allowed)) or '(none)'}")


def _recurrent(name: str, values: dict[str, str], flags: set[str], seq_len: int, batch: int) -> tuple[nn.Module, Any]:
    allowed = _RNN_FLAGS - ({"relu"} if name != "rnn" else set())
    keys = set(_RNN_KEYS) - ({"proj"} if name != "lstm" else set())
    _check(name, values, flags, keys, allowed)
    size = {k: _int(name, values, k, d, minimum=0 if k == "proj" else 1) for k, d in _RNN_KEYS.items() if k in keys}
    kw: dict[str, Any] = dict(num_layers=size["layers"], bidirectional="bidirectional" in flags,
                              batch_first="batch_first" in flags, bias="nobias" not in flags)
    if name == "lstm" and size.get("proj"):
        kw["proj_size"] = size["proj"]
    if name == "rnn" and "relu" in flags:
        kw["nonlinearity"] = "relu"
    if "torchcells" in flags:
        import torchcells
        factory: Callable[..., nn.Module] = {"lstm": torchcells.LSTM, "gru": torchcells.GRU, "rnn": torchcells.RNN}[name]
    else:
        factory = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[name]
    model = factory(size["input"], size["hidden"], **kw)
    shape = (batch, seq_len, size["input"]) if kw["batch_first"] else (seq_len, batch, size["input"])
    return model, torch.randn(*shape)


def _mlp(values: dict[str, str], flags: set[str], batch: int) -> tuple[nn.Module, Any]:
    _check("mlp", values, flags, {"input", "hidden", "output"}, set())
    sizes = [_int("mlp", values, "input", 784)]
    for part in values.get("hidden", "128").split("/"):
        sizes.append(_int("mlp", {"hidden": part}, "hidden", 128))
    sizes.append(_int("mlp", values, "output", 10))
    layers: list[nn.Module] = []
    for a, b in zip(sizes, sizes[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1]), torch.randn(batch, sizes[0])


def _cnn(values: dict[str, str], flags: set[str], batch: int) -> tuple[nn.Module, Any]:
    _check("cnn", values, flags, {"channels", "size", "filters", "kernel", "classes"}, set())
    ch, size = _int("cnn", values, "channels", 1), _int("cnn", values, "size", 28)
    filters, kernel, classes = (_int("cnn", values, k, d) for k, d in (("filters", 8), ("kernel", 3), ("classes", 10)))
    if kernel > size:
        raise ValueError(f"cnn: kernel ({kernel}) should not be larger than the image size ({size})")
    side = (size - kernel + 1) // 2
    model = nn.Sequential(nn.Conv2d(ch, filters, kernel), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                          nn.Linear(filters * side * side, classes))
    return model, torch.randn(batch, ch, size, size)


def build(spec: str, *, seq_len: int = 5, batch: int = 1,
          input_shape: Optional[tuple[int, ...]] = None) -> tuple[nn.Module, Any]:
    """The model and an example input described by ``spec`` (see the module docstring)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"empty SPEC; {GRAMMAR}")
    if seq_len < 1 or batch < 1:
        raise ValueError(f"--seq-len and --batch should be at least 1, got {seq_len} and {batch}")
    name, values, flags = parse(spec)
    if name in ("lstm", "gru", "rnn"):
        return _recurrent(name, values, flags, seq_len, batch)
    if name == "mlp":
        return _mlp(values, flags, batch)
    if name == "cnn":
        return _cnn(values, flags, batch)
    return _import(spec, input_shape)


def _import(spec: str, input_shape: Optional[tuple[int, ...]]) -> tuple[nn.Module, Any]:
    module_name, colon, attr = spec.partition(":")
    if not colon or not attr or "=" in spec:
        raise ValueError(f"unknown SPEC {spec!r}: {GRAMMAR}")
    factory = getattr(_load(spec, module_name), attr, None)
    if not callable(factory):
        raise ValueError(f"SPEC {spec!r}: {module_name} has no callable {attr!r}")
    try:
        inspect.signature(factory).bind()
    except TypeError as e:
        raise ValueError(f"SPEC {spec!r}: {attr}() should need no arguments, but {e}") from None
    except ValueError:
        pass                                         # no signature to read (a builtin): just call it
    try:
        made = factory()
    except Exception as e:
        raise ValueError(f"SPEC {spec!r}: {attr}() raised {type(e).__name__}: {_first_line(e)}") from e
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        return made[0], made[1]
    if not isinstance(made, nn.Module):
        raise ValueError(f"SPEC {spec!r}: {attr}() should return a torch.nn.Module or (module, example_input), "
                         f"got {type(made).__name__}")
    if input_shape is None:
        raise ValueError(f"SPEC {spec!r}: {attr}() returned a module without an example input; give its shape "
                         f"with --input-shape (e.g. --input-shape 5,1,10), or return (module, example_input)")
    return made, torch.randn(*input_shape)


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else "(no message)"


def _load(spec: str, module_name: str) -> Any:
    """Import ``module_name`` with the current folder on the import path (as ``python -m`` has it)."""
    added = "" not in sys.path and os.getcwd() not in sys.path
    if added:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"SPEC {spec!r}: cannot import {module_name!r} ({e}); {GRAMMAR}") from e
    except Exception as e:                            # a SyntaxError, or an error raised while importing
        raise ValueError(f"SPEC {spec!r}: importing {module_name!r} raised {type(e).__name__}: "
                         f"{_first_line(e)}") from e
    finally:
        if added:
            sys.path.remove(os.getcwd())
