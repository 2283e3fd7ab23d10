"""What a traced step depends on: the key under which :mod:`.derive` caches a derivation.

A trace runs the cell's Python code once and keeps only its tensor operations: every
Python value the code read on the way is baked into the graphs. A cached derivation is
reused only where all of them are what they were. The key holds

* the structure: module types, parameter and buffer shapes and dtypes, training flags;
* the step's shapes (``x_t``, the state's leaves), lengths or not, autocast's state;
* the Python values the step can read: each module's instance attributes, the data
  attributes of its classes (the MRO, torch's own classes left out), the ``forward`` in
  effect (an instance's or the class's) and the forward hooks; and, following the code
  from each ``forward`` and hook, the module globals and closure cells it names
  (``co_names`` of the code and of the code nested in it), transitively through the
  Python functions, methods and properties it names, outside torch, the standard library
  and torchcells, :data:`FUNCTION_DEPTH` calls deep.

Values are keyed by value where they are plain data -- numbers, strings, dtypes,
devices; tuples, lists, dicts, sets, namedtuples, dataclasses and ``SimpleNamespace`` by
their contents, recursively, up to :data:`MAX_ITEMS` items -- tensors by identity and
version counter (an in-place change is a change), anything else by identity. The names
each code object reads are found once per code object; a call re-reads only the values.
An object keyed by identity is held by the cache entry (weakly where it can be), so its
id cannot be taken by another object while the entry lives (:meth:`StepKey.refs`).

What is not seen: a value reached by a computed name (``globals()[name]``, ``getattr`` of
a module global), the contents of an object of any other type (its identity is keyed),
code in torch, the standard library or torchcells (its module globals).
"""

from __future__ import annotations

import dataclasses
import sys
import types
import weakref
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

__all__ = ["StepKey", "describe_change", "step_key"]

#: items of one value's containers keyed by contents (beyond: by identity)
MAX_ITEMS = 64
#: nesting of containers keyed by contents
MAX_DEPTH = 4
#: how many calls deep the code is followed from each ``forward``
FUNCTION_DEPTH = 4

_BY_VALUE = frozenset({str, type(None), torch.dtype, torch.device, torch.layout, torch.memory_format})
_NUMBERS = frozenset({int, bool, complex})
_SETS = frozenset({set, frozenset})
#: the attributes every nn.Module has (its parameters, buffers, submodules, hooks): keyed
#: through named_parameters/named_buffers/named_modules and the hooks' own item
_MODULE_INTERNALS = frozenset(vars(nn.Module()))
#: code not followed (its globals are not the user's to change between calls)
_LIBRARIES = frozenset(sys.stdlib_module_names) | {"torch", "functorch", "torchcells", "numpy", "builtins"}
#: class attributes that are code, not data: followed when the step names them, not keyed as values
_CODE = (types.FunctionType, staticmethod, classmethod, property, types.MemberDescriptorType,
         types.GetSetDescriptorType)


class StepKey(tuple):
    """The key: ``(structure, values, shapes)``; :attr:`held` the objects keyed by identity, in order.
    Kept as a plain ``tuple(key)`` (equal, same hash) with :meth:`refs`: no strong references."""

    held: list

    def refs(self) -> tuple:
        """References to :attr:`held` for a cache entry: weak where the object allows it."""
        return tuple(_reference(o) for o in self.held)

    def same_objects(self, refs: tuple) -> bool:
        """Whether ``refs`` (an entry's) still point at this key's objects: an id in the key is
        then the same object, not a new one at a freed one's address."""
        return len(refs) == len(self.held) and all(r() is o for r, o in zip(refs, self.held))


def _reference(obj: Any) -> Callable[[], Any]:
    try:
        return weakref.ref(obj)
    except TypeError:
        return lambda: obj


def step_key(cell: nn.Module, x_t: Tensor, state: Any, masked: bool, autocast: Any,
             batch_generic: bool = False) -> StepKey:
    """The key of ``cell``'s derivation for one step ``x_t`` ``(B, ...)`` and ``state``.

    ``batch_generic``: the key of a derivation traced with a symbolic batch size, which serves
    every ``B >= 2``: the batch dim (dim 0 of ``x_t`` and of each state leaf whose dim 0 is
    ``B``) is keyed as ``"B"``, and the key says it is generic (it never equals a per-B key)."""
    leaves, spec = tree_flatten(state)
    modules = list(cell.named_modules())
    structure = tuple(
        (name, type(m), m.training,
         tuple((n, tuple(p.shape), p.dtype, p.requires_grad) for n, p in m.named_parameters(recurse=False)),
         tuple((n, tuple(b.shape), b.dtype) for n, b in m.named_buffers(recurse=False)))
        for name, m in modules)
    reader = _Reader(modules)
    reader.read()
    shapes = (_batched(x_t, x_t, batch_generic), x_t.dtype, x_t.device,
              tuple((_batched(t, x_t, batch_generic), t.dtype) for t in leaves), str(spec), masked, autocast,
              batch_generic)
    key = StepKey((structure, tuple(reader.items), shapes))
    key.held = reader.held
    return key


def _batched(t: Tensor, x_t: Tensor, batch_generic: bool) -> tuple:
    """``t``'s shape, its batch dim as ``"B"`` in a batch-generic key."""
    shape = tuple(t.shape)
    if batch_generic and shape and x_t.dim() and shape[0] == x_t.shape[0]:
        return ("B",) + shape[1:]
    return shape


class _Reader:
    """Reads the Python values the step of ``modules`` can see, as labelled key items."""

    def __init__(self, modules: list[tuple[str, nn.Module]]) -> None:
        self.modules = modules
        self.items: list[tuple] = []  # (kind, where, name, value key)
        self.held: list = []
        self.visited: set[int] = set()
        self.classes: list[type] = []
        for _, m in modules:
            for klass in type(m).__mro__:
                if klass not in self.classes and not _library(klass.__module__):
                    self.classes.append(klass)
        #: code attributes of those classes by name (methods, properties), for the code that names them
        self.methods: dict[str, list[tuple[type, Any]]] = {}

    def read(self) -> None:
        items = self.items
        for klass in self.classes:
            for name, v in klass.__dict__.items():
                if isinstance(v, _CODE):
                    self.methods.setdefault(name, []).append((klass, v))
                elif not name.startswith("__"):
                    items.append(("class attribute", klass.__qualname__, name, self.value(v)))
        for where, m in self.modules:
            attrs = vars(m)
            for name, v in attrs.items():
                if name not in _MODULE_INTERNALS:
                    items.append(("attribute", where, name, self.value(v)))
            forward = attrs.get("forward") or type(m).forward
            items.append(("forward", where, "forward", self.identity(forward)))
            self.follow(forward, 0)
            for hooks in (m._forward_pre_hooks, m._forward_hooks):
                if hooks:
                    items.append(("hook", where, "forward hooks", tuple(self.identity(h) for h in hooks.values())))
                    for h in hooks.values():
                        self.follow(h, 0)
        for hooks in (nn.modules.module._global_forward_pre_hooks, nn.modules.module._global_forward_hooks):
            if hooks:
                items.append(("hook", "global", "forward hooks", tuple(self.identity(h) for h in hooks.values())))

    # -- values

    def identity(self, obj: Any) -> tuple:
        self.held.append(obj)
        return (object, id(obj))

    def value(self, v: Any, depth: int = MAX_DEPTH) -> Any:
        """``v``'s key: by value, by contents (bounded), or by identity."""
        t = type(v)
        if t is float:
            return (float, v.hex())  # nan equals itself, -0.0 differs from 0.0
        if t in _NUMBERS:
            return (t, v)  # 1, 1.0 and True trace differently
        if t in _BY_VALUE:
            return v
        if isinstance(v, Tensor):
            try:
                version = v._version
            except RuntimeError:  # an inference tensor has no version counter (and cannot change in place)
                version = None
            return (Tensor, self.identity(v), version, tuple(v.shape), v.dtype)
        if depth:
            if isinstance(v, (tuple, list)) and len(v) <= MAX_ITEMS:  # namedtuples and torch.Size too
                return (t, tuple([self.value(e, depth - 1) for e in v]))
            if isinstance(v, dict) and len(v) <= MAX_ITEMS:
                return (t, tuple([(self.value(k, depth - 1), self.value(e, depth - 1)) for k, e in v.items()]))
            if t in _SETS and len(v) <= MAX_ITEMS:
                return (t, frozenset([self.value(e, depth - 1) for e in v]))
            fields = _fields(v, t)
            if fields is not None and len(fields) <= MAX_ITEMS:
                return (t, tuple([(k, self.value(e, depth - 1)) for k, e in fields.items()]))
        return self.identity(v)

    # -- code

    def follow(self, obj: Any, depth: int) -> None:
        """Key what the code of ``obj`` (a function, method, property ...) reads, and follow it."""
        fn = _function(obj)
        if fn is None or id(fn) in self.visited or depth > FUNCTION_DEPTH or _library(fn.__module__):
            return
        self.visited.add(id(fn))
        names = code_names(fn.__code__)
        where = fn.__qualname__
        scope = fn.__globals__
        module = scope.get("__name__", "")
        for name in names:
            if name in scope:
                v = scope[name]
                self.items.append(("global", module, name, self.value(v)))
                if isinstance(v, (types.ModuleType, type)):
                    self._namespace(v, names, depth)
                else:
                    self.follow(v, depth + 1)
            for klass, found in self.methods.get(name, ()):  # methods, properties (self.helper(...))
                self.items.append(("method", klass.__qualname__, name, self.identity(found)))
                self.follow(found, depth + 1)
        if fn.__closure__:
            for name, box in zip(fn.__code__.co_freevars, fn.__closure__):
                try:
                    v = box.cell_contents
                except ValueError:  # not yet bound
                    continue
                self.items.append(("closure variable", where, name, self.value(v)))
                self.follow(v, depth + 1)
        if fn.__defaults__ or fn.__kwdefaults__:
            self.items.append(("defaults", where, "defaults", self.value((fn.__defaults__, fn.__kwdefaults__))))

    def _namespace(self, space: Any, names: tuple[str, ...], depth: int) -> None:
        """``config.SCALE`` with ``config`` a user module or class: its attributes the code names."""
        if _library(space.__module__ if isinstance(space, type) else space.__name__):
            return
        where = space.__qualname__ if isinstance(space, type) else space.__name__
        for attrs in [k.__dict__ for k in space.__mro__[:-1]] if isinstance(space, type) else [vars(space)]:
            for name in names:
                if name in attrs:
                    v = attrs[name]
                    self.items.append(("global", where, name, self.value(v)))
                    self.follow(v, depth + 1)


def _fields(v: Any, t: type) -> Optional[dict]:
    """The attributes of a dataclass instance or a ``SimpleNamespace`` (keyed by contents), else ``None``."""
    if t is types.SimpleNamespace:
        return vars(v)
    if dataclasses.is_dataclass(v) and not isinstance(v, type):
        return {f.name: getattr(v, f.name) for f in dataclasses.fields(v)}  # slots dataclasses too
    return None


_LIBRARY_MODULES: dict[Optional[str], bool] = {}


def _library(module: Optional[str]) -> bool:
    found = _LIBRARY_MODULES.get(module)
    if found is None:
        found = _LIBRARY_MODULES[module] = (module or "").partition(".")[0] in _LIBRARIES
    return found


def _function(obj: Any) -> Optional[types.FunctionType]:
    """The Python function behind ``obj`` (a function, bound method, static/class method, property)."""
    if isinstance(obj, types.FunctionType):
        return obj
    if isinstance(obj, (types.MethodType, staticmethod, classmethod)):
        return _function(obj.__func__)
    if isinstance(obj, property):
        return _function(obj.fget)
    return None


#: names per code object (a plain dict: a weak one costs more per look-up than the whole walk;
#: emptied when it outgrows :data:`_MAX_CODES`, code made at run time would otherwise pile up)
_NAMES: dict[types.CodeType, tuple[str, ...]] = {}
_MAX_CODES = 4096


def code_names(code: types.CodeType) -> tuple[str, ...]:
    """The names ``code`` and the code nested in it (lambdas, comprehensions, inner functions)
    look up as globals or attributes (found once per code object)."""
    found = _NAMES.get(code)
    if found is None:
        names = dict.fromkeys(code.co_names)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                names.update(dict.fromkeys(code_names(const)))
        if len(_NAMES) >= _MAX_CODES:
            _NAMES.clear()
        found = _NAMES[code] = tuple(names)
    return found


_LABELS = {"attribute": "attribute {name} of {where}", "class attribute": "class attribute {where}.{name}",
           "global": "global {name} (module {where})", "closure variable": "variable {name} of {where}",
           "forward": "forward of {where}", "method": "method {where}.{name}", "hook": "{name} of {where}",
           "defaults": "default arguments of {where}"}


def describe_change(before: tuple, after: tuple) -> str:
    """What differs between two keys of one cell, in words (``"attribute temperature of the cell"``)."""
    changed: list[str] = []
    if before[0] != after[0]:
        changed.append("its structure (modules, parameters, training mode)")
    old = {item[:3]: item[3] for item in before[1]}
    for kind, where, name, value in after[1]:
        if old.get((kind, where, name), value) != value:
            label = _LABELS[kind].format(name=name, where=where or "the cell")
            if label not in changed:
                changed.append(label)
    if before[2] != after[2]:
        unbatched = [_without_batch(k[2]) for k in (before, after)]
        changed.append("the batch size" if unbatched[0] == unbatched[1] else "the step's shapes or dtypes")
    return ", ".join(changed) or "nothing the key names"


def _without_batch(shapes: tuple) -> tuple:
    x_shape, dtype, device, leaves, *rest = shapes
    return (x_shape[1:], dtype, device, tuple((s[1:], d) for s, d in leaves), *rest)
