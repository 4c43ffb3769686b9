"""The label hierarchy: sigmoid output channels, their source label values and parent -> children.

A hierarchy is data (a small JSON file), so deeper or other trees need no code change::

    {"name": "dhcp-drawem9",
     "channels": [{"name": "cgm", "value": 2}, ...,
                  {"name": "tcv", "value": 10, "children": ["cgm", "wm", "dgm"]}]}

Each channel has a ``name``, the label ``value`` (or a list ``values``, the first one canonical)
that marks a voxel annotated *as this node*, and optionally ``children``. A parent's value is what
a coarsely (partially) labelled map carries where its children are not told apart; a parent
without a value is only ever derived from its children.

Targets follow docs/method.md section 2: a voxel annotated with node n gets 1 for n and its ancestors,
2 (unknown) for n's descendants and 0 for every other channel. Numpy only: the runtime shares it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from .labels import MAX_LABEL_VALUE, label_dtype

UNKNOWN = 2  # target value of an unobserved (child) entry


@dataclass(frozen=True)
class Channel:
    name: str
    values: tuple[int, ...]  # source label values; values[0] is written when decoding
    children: tuple[str, ...] = ()

    @property
    def value(self) -> int | None:
        return self.values[0] if self.values else None


@dataclass(frozen=True)
class Hierarchy:
    """Validated label hierarchy. Build with :meth:`from_dict`, :meth:`load` or :func:`builtin`."""

    name: str
    channels: tuple[Channel, ...]

    # ---- construction and validation -------------------------------------------------------
    @classmethod
    def from_dict(cls, spec: dict) -> "Hierarchy":
        if not isinstance(spec, dict) or not isinstance(spec.get("channels"), list) or not spec["channels"]:
            raise ValueError("hierarchy: expected an object with a non-empty 'channels' list")
        channels = [_parse_channel(i, c) for i, c in enumerate(spec["channels"])]
        hierarchy = cls(name=str(spec.get("name", "custom")), channels=tuple(channels))
        hierarchy._validate()
        return hierarchy

    @classmethod
    def load(cls, path: str | Path) -> "Hierarchy":
        path = Path(path)
        try:
            spec = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"hierarchy file {path} does not exist; pass an existing JSON file "
                             f"or a built-in name ({', '.join(builtin_names())})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"hierarchy file {path} is not valid JSON: {e}") from None
        return cls.from_dict(spec)

    @classmethod
    def from_json(cls, text: str) -> "Hierarchy":
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict:
        out = []
        for c in self.channels:
            d: dict = {"name": c.name}
            if len(c.values) == 1:
                d["value"] = c.values[0]
            elif c.values:
                d["values"] = list(c.values)
            if c.children:
                d["children"] = list(c.children)
            out.append(d)
        return {"name": self.name, "channels": out}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    def _validate(self) -> None:
        names = [c.name for c in self.channels]
        seen: set[str] = set()
        for n in names:
            if n in seen:
                raise ValueError(f"hierarchy '{self.name}': channel name '{n}' appears twice; names must be unique")
            seen.add(n)
        owner: dict[int, str] = {}
        for c in self.channels:
            for v in c.values:
                if v in owner:
                    raise ValueError(f"hierarchy '{self.name}': label value {v} belongs to both "
                                     f"'{owner[v]}' and '{c.name}'; each value may name one channel")
                owner[v] = c.name
        parent_of: dict[str, str] = {}
        for c in self.channels:
            for child in c.children:
                if child not in seen:
                    raise ValueError(f"hierarchy '{self.name}': '{c.name}' lists unknown child '{child}'; "
                                     f"channels are {names}")
                if child in parent_of:
                    raise ValueError(f"hierarchy '{self.name}': '{child}' has two parents "
                                     f"('{parent_of[child]}' and '{c.name}'); a channel has at most one")
                parent_of[child] = c.name
        for c in self.channels:  # walk up from every node; a revisit means a cycle
            path, node = [c.name], c.name
            while node in parent_of:
                node = parent_of[node]
                if node in path:
                    raise ValueError(f"hierarchy '{self.name}': cycle {' -> '.join(path + [node])}")
                path.append(node)
        for c in self.channels:
            if not c.children and not c.values:
                raise ValueError(f"hierarchy '{self.name}': leaf '{c.name}' has no label value; "
                                 f"give it \"value\": <int>")

    # ---- structure -------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    def __len__(self) -> int:
        return len(self.channels)

    def index(self, name: str) -> int:
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"unknown channel '{name}'; channels are {self.names}") from None

    def parent(self, i: int) -> int | None:
        name = self.channels[i].name
        for j, c in enumerate(self.channels):
            if name in c.children:
                return j
        return None

    def children(self, i: int) -> list[int]:
        return [self.index(n) for n in self.channels[i].children]

    def ancestors(self, i: int) -> list[int]:
        out, p = [], self.parent(i)
        while p is not None:
            out.append(p)
            p = self.parent(p)
        return out

    def descendants(self, i: int) -> list[int]:
        out = []
        for c in self.children(i):
            out += [c] + self.descendants(c)
        return out

    @property
    def roots(self) -> list[int]:
        return [i for i in range(len(self)) if self.parent(i) is None]

    @property
    def leaves(self) -> list[int]:
        return [i for i, c in enumerate(self.channels) if not c.children]

    @property
    def sibling_groups(self) -> list[tuple[int, list[int]]]:
        """(parent, children) for every parent, top-down."""
        order, queue = [], list(self.roots)
        while queue:
            i = queue.pop(0)
            if self.channels[i].children:
                order.append((i, self.children(i)))
                queue += self.children(i)
        return order

    @property
    def outside_channel(self) -> int | None:
        """The channel of label value 0 (outside the brain mask), if any: what voxels that no
        slice window covers are set to."""
        return next((i for i, c in enumerate(self.channels) if 0 in c.values), None)

    @property
    def label_values(self) -> list[int]:
        return sorted(v for c in self.channels for v in c.values)

    @property
    def label_dtype(self) -> np.dtype:
        """The smallest unsigned integer type that holds every label value (uint8 or uint16)."""
        return label_dtype(max(self.label_values))

    def unnamed(self, values) -> list[int]:
        """Those of ``values`` (label values found in a map) that no channel names."""
        known = set(self.label_values)
        return sorted(int(v) for v in values if int(v) not in known)

    # ---- targets ---------------------------------------------------------------------------
    def target_table(self) -> np.ndarray:
        """(max value + 1, C) uint8 lookup: row v is the {0,1,2} target of a voxel labelled v.
        Rows of values that no channel names are 255 (invalid)."""
        table = np.full((max(self.label_values) + 1, len(self)), 255, np.uint8)
        for i, c in enumerate(self.channels):
            row = np.zeros(len(self), np.uint8)
            row[[i] + self.ancestors(i)] = 1
            row[self.descendants(i)] = UNKNOWN
            for v in c.values:
                table[v] = row
        return table

    def encode(self, labels: np.ndarray, table: np.ndarray | None = None) -> np.ndarray:
        """Label map (any shape, integer values) -> {0,1,2} uint8 targets, channels first."""
        table = self.target_table() if table is None else table
        labels = np.asarray(labels)
        if labels.size and (labels.min() < 0 or labels.max() >= len(table)):
            raise ValueError(f"label map holds values outside {self.label_values} "
                             f"(found {int(labels.min())}..{int(labels.max())}) for hierarchy '{self.name}'")
        out = table[labels]
        if (out[..., 0] == 255).any():
            bad = np.unique(labels[out[..., 0] == 255])
            raise ValueError(f"label map holds values {bad.tolist()} that hierarchy '{self.name}' does not "
                             f"name (known: {self.label_values}); pass the matching hierarchy file")
        return np.moveaxis(out, -1, 0)

    def coarsen(self, labels: np.ndarray, parents: list[str] | None = None) -> np.ndarray:
        """Simulate partial labels: every descendant of each parent takes the parent's value.
        ``parents`` defaults to every parent that has a label value. Returns the hierarchy's
        :attr:`label_dtype`."""
        chosen = {i for i, _ in self.sibling_groups if self.channels[i].values} if parents is None \
            else {self.index(p) for p in parents}
        labels = np.asarray(labels)
        top = max(self.label_values)
        if labels.size and (labels.min() < 0 or labels.max() > top):
            raise ValueError(f"label map holds values outside {self.label_values} "
                             f"(found {int(labels.min())}..{int(labels.max())}) for hierarchy '{self.name}'")
        lut = np.arange(top + 1, dtype=self.label_dtype)  # holds every value, whatever the map's type
        bottom_up = [i for i, _ in reversed(self.sibling_groups) if i in chosen]  # so the outermost wins
        for p in bottom_up:
            value = self.channels[p].value
            if value is None:
                raise ValueError(f"cannot coarsen to '{self.channels[p].name}': it has no label value")
            for d in self.descendants(p):
                lut[list(self.channels[d].values)] = value
        return lut[labels]

    # ---- decoding predictions --------------------------------------------------------------
    def masks(self, probs: np.ndarray, thresholds: np.ndarray | float = 0.5, axis: int = 0) -> np.ndarray:
        """Per-channel binary masks (uint8): probability >= the channel's threshold."""
        t = np.broadcast_to(np.asarray(thresholds, np.float32), (len(self),))
        shape = [1] * probs.ndim
        shape[axis] = len(self)
        return (probs >= t.reshape(shape)).astype(np.uint8)

    def to_labels(self, probs: np.ndarray, axis: int = 0) -> np.ndarray:
        """Hierarchy-consistent label map in the source values: pick the most probable root,
        then descend into the most probable child until a leaf; write that leaf's value."""
        probs = np.moveaxis(probs, axis, 0)
        roots = self.roots
        return self.descend(np.asarray(roots)[np.argmax(probs[roots], axis=0)], probs)

    def descend(self, node: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """From channel indices ``node`` (...) down to leaves: wherever a node is a parent, take its
        most probable child (``probs`` (C, ...)), group by group, top-down (``node`` is updated in
        place); return the leaves' label values."""
        for parent, kids in self.sibling_groups:
            where = node == parent
            if where.any():
                node[where] = np.asarray(kids)[np.argmax(probs[kids][:, where], axis=0)]
        values = np.array([c.value if c.value is not None else 0 for c in self.channels], np.int32)
        return values[node]


def _parse_channel(i: int, c: dict) -> Channel:
    if not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]:
        raise ValueError(f"hierarchy channel #{i}: expected an object with a non-empty 'name'")
    if "value" in c and "values" in c:
        raise ValueError(f"hierarchy channel '{c['name']}': give 'value' or 'values', not both")
    raw = c.get("values", [c["value"]] if "value" in c else [])
    if not isinstance(raw, list) or not all(isinstance(v, int) and not isinstance(v, bool)
                                            and 0 <= v <= MAX_LABEL_VALUE for v in raw):
        raise ValueError(f"hierarchy channel '{c['name']}': label values must be integers in "
                         f"0..{MAX_LABEL_VALUE}, got {raw!r}")
    children = c.get("children", [])
    if not isinstance(children, list) or not all(isinstance(n, str) for n in children):
        raise ValueError(f"hierarchy channel '{c['name']}': 'children' must be a list of channel names")
    unknown = set(c) - {"name", "value", "values", "children"}
    if unknown:
        raise ValueError(f"hierarchy channel '{c['name']}': unknown keys {sorted(unknown)}; "
                         f"allowed are name, value, values, children")
    return Channel(name=c["name"], values=tuple(raw), children=tuple(children))


def builtin_names() -> list[str]:
    folder = resources.files("neoseg.core") / "hierarchies"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".json"))


def builtin(name: str = "dhcp-drawem9") -> Hierarchy:
    path = resources.files("neoseg.core") / "hierarchies" / f"{name}.json"
    if not path.is_file():
        raise ValueError(f"no built-in hierarchy '{name}'; built-in: {', '.join(builtin_names())}")
    return Hierarchy.from_json(path.read_text())


def resolve(spec: str | Path) -> Hierarchy:
    """A built-in name or a path to a JSON file."""
    spec = str(spec)
    if spec in builtin_names():
        return builtin(spec)
    return Hierarchy.load(spec)
