"""``neoseg-serve --config node.toml``: a DICOM node that receives MR studies, segments each study's T2w
series once the study has stopped growing, and sends the DICOM SEG on by C-STORE (docs/dicom.md)."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from .common import atlas_fusion, make_app, user_errors

app = make_app()


@app.command()
def serve(
    config: Annotated[Optional[Path], typer.Option("--config", "-c", dir_okay=False,
                                                   help="The node's TOML configuration file.")] = None,
    example: Annotated[bool, typer.Option("--example", help="Print an example configuration and stop.")] = False,
) -> None:
    """Run the node until stopped (SIGTERM or Ctrl-C): one line per study on stderr."""
    with user_errors("neoseg-serve"):
        from neoseg.dicom.config import EXAMPLE, load_config

        if example:
            typer.echo(EXAMPLE, nl=False)
            return
        if config is None:
            raise ValueError("missing --config node.toml (neoseg-serve --example prints one)")
        node = build_node(load_config(config))
        # one line per study: the libraries' own INFO chatter (each C-STORE, each copied module) is kept out
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(message)s", stream=sys.stderr)
        logging.getLogger("neoseg.serve").setLevel(logging.INFO)
        signal.signal(signal.SIGTERM, lambda *_: node.stopping.set())
        node.serve_forever()


def build_node(config):
    """The node with its model loaded once."""
    import neoseg.train.torch_backend  # noqa: F401 - provides torch-cpu/torch-cuda for a .pt checkpoint, as neoseg-infer
    from neoseg.dicom.node import Node
    from neoseg.runtime.backends import open_backend
    from neoseg.runtime.pipeline import Segmenter

    if not config.model.is_file():
        raise ValueError(f"[model] path {config.model} does not exist; set the path of the model.onnx")
    backend = open_backend(config.model, config.backend, config.threads, config.precision)
    fusion = None
    settings = config.atlas
    if settings is not None:  # checked here, at start: a wrong folder or weight is one line, not a failed study
        if not settings.folder.is_dir():
            raise ValueError(f"[atlas] folder {settings.folder} is not a folder; set the dHCP-layout folder of "
                             f"the fully labelled sessions")
        fusion = atlas_fusion(settings.folder, backend.info.hierarchy, settings.per_scan, settings.weight,
                              settings.warps)
    return Node(config, Segmenter(backend, host_threads=config.threads, atlas=fusion))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
