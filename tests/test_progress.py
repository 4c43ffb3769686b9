"""Progress output: bars only on a terminal, one plain line per item (scan, epoch) otherwise."""

from __future__ import annotations

import io
import sys

import pytest

from neoseg.cli.progress import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_scan_progress_is_plain_lines_off_a_terminal(capsys):
    with Progress(2) as progress:
        progress.start("a")
        progress.done("a: 1.0 s")
        progress.done("b: FAILED: broken", err=True)
    out, err = capsys.readouterr()
    assert out == "[1/2] a: 1.0 s\n" and err == "[2/2] b: FAILED: broken\n"


def test_scan_progress_draws_a_bar_on_a_terminal(monkeypatch, capsys):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Progress(2) as progress:
        progress.start("sub-1")
        progress.done("sub-1: 1.0 s")
    assert "[1/2] sub-1: 1.0 s" in capsys.readouterr().out
    assert "scan" in terminal.getvalue() and "\r" in terminal.getvalue()


@pytest.mark.parametrize("tty", [False, True])
def test_training_bars_stay_out_of_log_files(tty, monkeypatch):
    torch = pytest.importorskip("torch")
    from neoseg.train.epoch import EpochContext, run_epoch

    stderr = Terminal() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    model = torch.nn.Conv2d(1, 2, 1)
    loader = [(torch.zeros(2, 1, 4, 4), torch.zeros(2, 2, 4, 4, dtype=torch.uint8), None)] * 3
    run_epoch(EpochContext(model, lambda logits, target: logits.mean(), "cpu", progress=True), loader, "epoch 1/9")
    assert ("epoch 1/9" in stderr.getvalue()) == tty  # a log file gets the epoch's log line only
