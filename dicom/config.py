"""``neoseg-serve``'s configuration file (TOML), read once and checked with one-line errors."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from .choice import REPEATS, SeriesRules

EXAMPLE = """\
[node]
ae_title = "NEOSEG"            # this node's AE title
host = "0.0.0.0"               # where the Storage SCP listens
port = 11112
spool = "/var/lib/neoseg/spool"  # received instances, one folder per study (removed once done)
output = "/var/lib/neoseg/out"   # NIfTI results, SEG and volumes JSON, one folder per study
settle_seconds = 30            # a study is complete after this long without a new instance
queue_size = 16                # complete studies waiting for the model; more wait in the spool
# timeout_seconds = 30         # association and message timeouts, both directions

[model]
path = "/opt/neoseg/model.onnx"
backend = "auto"               # as neoseg-infer --backend
precision = "auto"

[destination]                  # where each SEG is sent by C-STORE
ae_title = "PACS"
host = "pacs.example.org"
port = 104

[series]                       # which series of a study is the T2w one (as neoseg-infer's rules)
description = ["t2"]
exclude = ["scout|locali[sz]er|survey"]
planes = []                    # e.g. ["axial"]
# max_voxel_size = 3.0
# numbers = [3]                # only these series numbers (description and exclude then apply only if set)
# repeats = "last"             # of repeats of one acquisition (after motion), the last; default "refuse"

# [atlas]                      # optional: atlas fusion, as neoseg-infer --atlas (needs the atlas extra)
# folder = "/opt/neoseg/atlases" # a dHCP-layout folder; its fully labelled sessions are the atlases
# per_scan = 3                 # the atlases registered to each scan, nearest in brain size
# weight = "0.5"               # the atlases' share of each child's probability, e.g. "0.5,wm=0"
# warps = "regular"            # or "regular,flexible" (or a list)
"""


@dataclass(frozen=True)
class Peer:
    ae_title: str
    host: str
    port: int


@dataclass(frozen=True)
class AtlasSettings:
    """``[atlas]``: neoseg-infer's ``--atlas``, ``--atlas-per-scan``, ``--atlas-weight`` and ``--atlas-warps``."""

    folder: Path
    per_scan: int = 3
    weight: str = "0.5"
    warps: str = "regular"


@dataclass
class NodeConfig:
    listen: Peer
    destination: Peer
    spool: Path
    output: Path
    model: Path
    backend: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    settle_seconds: float = 30.0
    queue_size: int = 16
    timeout_seconds: float = 30.0  # ACSE, DIMSE and network timeouts of both roles
    rules: SeriesRules = field(default_factory=SeriesRules)
    atlas: AtlasSettings | None = None  # atlas fusion after the network; None: off


def load_config(path: str | Path) -> NodeConfig:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"config {path} does not exist; write one (see docs/dicom.md)") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"config {path} is not valid TOML ({e}); fix it") from None
    return parse_config(data, path)


def parse_config(data: dict, where: Path | str = "config") -> NodeConfig:
    node, model, dest, series = (_table(data, k, where) for k in ("node", "model", "destination", "series"))
    unknown = set(data) - {"node", "model", "destination", "series", "atlas"}
    if unknown:
        raise ValueError(f"{where}: unknown table [{sorted(unknown)[0]}]; the tables are node, model, destination, "
                         f"series and atlas")
    rules = _rules(series, where)
    return NodeConfig(
        listen=Peer(str(node.get("ae_title", "NEOSEG")), str(node.get("host", "0.0.0.0")), _port(node, where, "node")),
        destination=Peer(_need(dest, "ae_title", where, "destination"), _need(dest, "host", where, "destination"),
                         _port(dest, where, "destination", required=True)),
        spool=Path(_need(node, "spool", where, "node")), output=Path(_need(node, "output", where, "node")),
        model=Path(_need(model, "path", where, "model")), backend=str(model.get("backend", "auto")),
        precision=str(model.get("precision", "auto")), threads=model.get("threads"),
        settle_seconds=_positive(node, "settle_seconds", 30.0, where),
        queue_size=int(_positive(node, "queue_size", 16, where)),
        timeout_seconds=_positive(node, "timeout_seconds", 30.0, where), rules=rules,
        atlas=_atlas(data, where))


def _rules(series: dict, where) -> SeriesRules:
    """``[series]``: neoseg-infer's rules; with ``numbers`` and without ``description`` (or ``exclude``),
    the default description patterns (or exclusions) are dropped, as with --series-number."""
    unknown = set(series) - {"description", "exclude", "planes", "max_voxel_size", "numbers", "repeats"}
    if unknown:
        raise ValueError(f"{where}: [series] has no setting '{sorted(unknown)[0]}'; the settings are description, "
                         f"exclude, planes, max_voxel_size, numbers and repeats")
    texts = {key: _strings(series, key, where) for key in ("description", "exclude", "planes")}
    numbers = series.get("numbers", [])
    if not isinstance(numbers, list) or not all(isinstance(n, int) and not isinstance(n, bool) for n in numbers):
        raise ValueError(f"{where}: [series] numbers must be a list of series numbers, e.g. [3], got {numbers!r}")
    voxel = series.get("max_voxel_size")
    if voxel is not None and (isinstance(voxel, bool) or not isinstance(voxel, (int, float)) or voxel <= 0):
        raise ValueError(f"{where}: [series] max_voxel_size must be a positive number (mm), got {voxel!r}")
    repeats = series.get("repeats", "refuse")
    if repeats not in REPEATS:
        raise ValueError(f"{where}: [series] repeats must be one of {', '.join(REPEATS)}, got {repeats!r}")
    return SeriesRules.given(texts["description"], texts["exclude"], texts["planes"], voxel, numbers, repeats,
                             explicit=True)


def _strings(table: dict, key: str, where) -> tuple[str, ...] | None:
    value = table.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{where}: [series] {key} must be a list of strings, got {value!r}")
    return tuple(value)


def _atlas(data: dict, where) -> AtlasSettings | None:
    if "atlas" not in data:
        return None
    table = _table(data, "atlas", where)
    unknown = set(table) - {"folder", "per_scan", "weight", "warps"}
    if unknown:
        raise ValueError(f"{where}: [atlas] has no setting '{sorted(unknown)[0]}'; the settings are folder, per_scan, "
                         f"weight and warps")
    per_scan = table.get("per_scan", 3)
    if isinstance(per_scan, bool) or not isinstance(per_scan, int) or per_scan < 1:
        raise ValueError(f"{where}: [atlas] per_scan must be a whole number of at least 1, got {per_scan!r}")
    warps = table.get("warps", "regular")
    return AtlasSettings(Path(_need(table, "folder", where, "atlas")), per_scan, str(table.get("weight", "0.5")),
                         ",".join(map(str, warps)) if isinstance(warps, list) else str(warps))


def _table(data: dict, key: str, where) -> dict:
    value = data.get(key, {})
    if not isinstance(value, dict):
        raise ValueError(f"{where}: [{key}] must be a table")
    return value


def _need(table: dict, key: str, where, name: str) -> str:
    if not table.get(key):
        raise ValueError(f"{where}: [{name}] {key} is missing; set it (see docs/dicom.md)")
    return str(table[key])


def _port(table: dict, where, name: str, required: bool = False) -> int:
    if "port" not in table and not required:
        return 11112
    port = table.get("port")
    if not isinstance(port, int) or not 0 <= port <= 65535:
        raise ValueError(f"{where}: [{name}] port must be a number from 0 to 65535, got {port!r}")
    return port


def _positive(table: dict, key: str, default: float, where) -> float:
    value = table.get(key, default)
    if not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"{where}: [node] {key} must be a positive number, got {value!r}")
    return float(value)
