"""``neoseg-serve``: a DICOM node. A Storage SCP (pynetdicom) receives MR instances into a spool folder,
one folder per study; a study that has received nothing for ``settle_seconds`` is complete and waits
in a bounded queue; one worker, with the model loaded once, chooses the study's T2w series by the
configured rules, segments it, writes the NIfTI outputs, the SEG and the volumes JSON, and sends the
SEG to the destination by C-STORE. One log line per study (its StudyInstanceUID, never patient data).
A failing study is logged, its files moved to ``<spool>/failed``, and the node goes on."""

from __future__ import annotations

import logging
import os
import queue
import re
import shutil
import threading
import time
from pathlib import Path

from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, evt
from pynetdicom.sop_class import (EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage, MRImageStorage,
                                  SegmentationStorage, Verification)

from .config import NodeConfig
from .deps import pydicom

log = logging.getLogger("neoseg.serve")
STORED_CLASSES = (MRImageStorage, EnhancedMRImageStorage, LegacyConvertedEnhancedMRImageStorage)
UID_TEXT = re.compile(r"^[0-9.]{1,64}$")  # a UID as a folder name: nothing else gets into a path
SUCCESS, OUT_OF_RESOURCES, CANNOT_UNDERSTAND = 0x0000, 0xA700, 0xC000


class Node:
    """Receive, segment, send. ``start()`` returns once the SCP listens; ``stop()`` ends it all."""

    def __init__(self, config: NodeConfig, segmenter):
        self.config, self.segmenter = config, segmenter
        self.spool, self.failed = config.spool, config.spool / "failed"
        self.last_seen: dict[str, float] = {}  # study UID -> when its latest instance arrived
        self.lock = threading.Lock()
        self.queue: queue.Queue[str] = queue.Queue(config.queue_size)
        self.stopping = threading.Event()
        self.server = None
        self.threads: list[threading.Thread] = []

    # ---- lifecycle ----------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Listen, and start the watcher and the worker; returns the address listened on."""
        self.spool.mkdir(parents=True, exist_ok=True)
        for work in sorted((self.spool / ".work").glob("*")):  # interrupted by a stop: do them again
            if UID_TEXT.match(work.name) and not (self.spool / work.name).exists():
                work.replace(self.spool / work.name)
        for study in sorted(p.name for p in self.spool.iterdir() if UID_TEXT.match(p.name)):
            self.last_seen[study] = time.monotonic()  # left by an earlier run: complete them too
        ae = AE(ae_title=self.config.listen.ae_title)
        for cls in STORED_CLASSES:
            ae.add_supported_context(cls, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_seconds
        self.server = ae.start_server((self.config.listen.host, self.config.listen.port), block=False,
                                      evt_handlers=[(evt.EVT_C_STORE, self._on_store)])
        for target in (self._watch, self._work):
            thread = threading.Thread(target=target, daemon=True, name=f"neoseg-{target.__name__[1:]}")
            thread.start()
            self.threads.append(thread)
        address = self.server.server_address[:2]
        log.info(f"neoseg-serve: {self.config.listen.ae_title} listening on {address[0]}:{address[1]}, "
                 f"sending SEG to {_peer(self.config.destination)}")
        return address

    def stop(self) -> None:
        self.stopping.set()
        if self.server is not None:
            self.server.shutdown()
        for thread in self.threads:
            thread.join(timeout=self.config.timeout_seconds)
        log.info("neoseg-serve: stopped")

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self.stopping.wait(1.0):
                pass
        finally:
            self.stop()

    # ---- receiving ----------------------------------------------------------------------------
    def _on_store(self, event) -> int:
        """Store one instance under spool/<study>/<series>/<instance>.dcm (written, then renamed)."""
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            study, series, sop = (str(ds.get(k, "")) for k in ("StudyInstanceUID", "SeriesInstanceUID",
                                                                "SOPInstanceUID"))
            if not all(UID_TEXT.match(u) for u in (study, series, sop)):
                return CANNOT_UNDERSTAND
            with self.lock:  # not while process() takes the study's folder away
                folder = self.spool / study / series
                folder.mkdir(parents=True, exist_ok=True)
                part = folder / f".{sop}.part"
                ds.save_as(part, enforce_file_format=True)
                part.replace(folder / f"{sop}.dcm")
                self.last_seen[study] = time.monotonic()
        except OSError:
            return OUT_OF_RESOURCES
        except Exception:  # noqa: BLE001 - a malformed dataset must not reach the sender as a crash
            return CANNOT_UNDERSTAND
        return SUCCESS

    def _watch(self) -> None:
        """Queue each study that has been quiet for ``settle_seconds``; a full queue holds it back."""
        tick = min(1.0, self.config.settle_seconds / 4)
        while not self.stopping.wait(tick):
            with self.lock:
                now = time.monotonic()
                quiet = sorted((t, s) for s, t in self.last_seen.items() if now - t >= self.config.settle_seconds)
                for _, study in quiet:
                    try:
                        self.queue.put_nowait(study)
                    except queue.Full:
                        break  # stays in last_seen: queued on a later tick
                    del self.last_seen[study]

    # ---- segmenting and sending ---------------------------------------------------------------
    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                study = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            work = self.spool / ".work" / study
            try:
                with self.lock:  # what has arrived is this run's; later instances start the study anew
                    work.parent.mkdir(exist_ok=True)
                    shutil.rmtree(work, ignore_errors=True)
                    (self.spool / study).replace(work)
                text = self.process(study, work)
            except Exception as e:  # noqa: BLE001 - one study's failure must not stop the node
                kept = self._set_aside(work)
                log.error(f"study {study}: error: {_failure(e, work, kept)}")
            else:
                log.info(f"study {study}: {text}")
                shutil.rmtree(work, ignore_errors=True)

    def process(self, study: str, folder: Path) -> str:
        """Segment the T2w series of a received study (its instances in ``folder``) and send its SEG;
        returns the log text: what was done, how long it took, and any warnings."""
        from .choice import NODE, choose
        from .run import dicom_output_paths, segment_series
        from .series import find_series

        start = time.perf_counter()
        chosen = choose(find_series(folder), self.config.rules, folder, NODE)
        out = self.config.output / study
        paths = dicom_output_paths(chosen.uid, out, seg=True)
        fresh = not out.exists()
        out.mkdir(parents=True, exist_ok=True)
        try:
            _, result = segment_series(chosen, folder, self.segmenter, paths, overwrite=True)
        except BaseException:
            if fresh and not any(out.iterdir()):
                out.rmdir()  # nothing was written: no empty folder is left for a failed study
            raise
        seg = pydicom.dcmread(paths["seg"])
        self._send(seg)
        warnings = "".join(f"; warning: {_in_study(w, folder)}" for w in result.warnings)
        return (f"{chosen.name}, {chosen.frames} frames -> SEG {seg.SOPInstanceUID} sent to "
                f"{_peer(self.config.destination)} ({time.perf_counter() - start:.1f} s){warnings}")

    def _send(self, seg) -> None:
        dest = self.config.destination
        ae = AE(ae_title=self.config.listen.ae_title)
        ae.add_requested_context(SegmentationStorage, str(seg.file_meta.TransferSyntaxUID))
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.config.timeout_seconds
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title)
        if not assoc.is_established:
            raise ConnectionError(f"could not associate with {_peer(dest)}; check that it runs and accepts "
                                  f"{self.config.listen.ae_title}")
        try:
            status = assoc.send_c_store(seg)
        finally:
            assoc.release()
        code = status.get("Status") if status else None
        if code != SUCCESS:
            raise ConnectionError(f"{_peer(dest)} did not store the SEG (status "
                                  f"{'none' if code is None else hex(code)}); the SEG stays in "
                                  f"{self.config.output}")

    def _set_aside(self, work: Path) -> Path | None:
        """A failed study's instances, kept for a look in ``<spool>/failed/<study>``; returns that folder
        (None when they could not be moved there, and were removed)."""
        self.failed.mkdir(parents=True, exist_ok=True)
        target = self.failed / work.name
        shutil.rmtree(target, ignore_errors=True)
        try:
            work.replace(target)
        except OSError:
            shutil.rmtree(work, ignore_errors=True)
            return None
        return target


def _peer(p) -> str:
    return f"{p.ae_title}@{p.host}:{p.port}"


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _failure(e: Exception, work: Path, kept: Path | None) -> str:
    """The error of a failed study, naming its files where they now are (``kept``), not where they were."""
    text = _one_line(e)
    if kept is None:
        return f"{text} (its instances could not be moved to {work.parent.parent / 'failed'})"
    text = text.replace(str(work), str(kept))
    return text if str(kept) in text else f"{text} (its instances are in {kept})"


def _in_study(text: str, folder: Path) -> str:
    """A warning about a received study, with its files named inside the study, not in the spool's work folder."""
    return text.replace(f"{folder}{os.sep}", "").replace(str(folder), "the study")
