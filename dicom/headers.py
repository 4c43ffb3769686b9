"""Reading one DICOM file's header, and refusing a file that is cut short (an interrupted copy or
transfer): pydicom reads such a header leniently, so a missing or short pixel data element is
looked for here, without reading the pixels, and named as damage rather than as bad geometry."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

from .deps import pydicom

MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
LEGACY_ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.4"
MR_CLASSES = {MR_IMAGE: "MR", ENHANCED_MR: "enhanced MR", LEGACY_ENHANCED_MR: "legacy enhanced MR"}
PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # Float, Double Float and (plain) Pixel Data
UNDEFINED_LENGTH = 0xFFFFFFFF


def read_header(path: Path):
    """The header of ``path`` (no pixel data read); a file that cannot be parsed, or whose pixel data
    are missing or cut short, is refused with one line naming it."""
    try:
        with path.open("rb") as f:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
            damage = _cut_short(f, ds, path.stat().st_size)
    except Exception as e:  # noqa: BLE001 - pydicom raises many types for damaged files
        raise ValueError(f"{path} is not a readable DICOM file ({cause(e)}); copy or export it again, or "
                         f"remove it") from None
    if damage:
        raise ValueError(f"{path} is damaged: {damage}, as after an interrupted copy or transfer; copy, send or "
                         f"export it again, or remove it")
    return ds


def _cut_short(f, ds, size: int) -> str:
    """Why an image file is incomplete ('' when it is whole). ``f`` stands where the header reading
    stopped: at the pixel data element, whose length is checked against the file's size."""
    syntax = str(getattr(ds, "file_meta", {}).get("TransferSyntaxUID", ""))
    image = "Rows" in ds or str(ds.get("SOPClassUID", "")) in MR_CLASSES
    if not image or syntax == pydicom.uid.DeflatedExplicitVRLittleEndian:
        return ""  # no pixels (a report, a key object), or a deflated file, read from memory
    start = f.tell()
    if start >= size:
        return f"it ends after {size} bytes, before its pixel data"
    implicit, little = ds.original_encoding
    try:
        with warnings.catch_warnings():  # pydicom warns of the missing end of encapsulated pixel data
            warnings.simplefilter("ignore")
            element = next(pydicom.filereader.data_element_generator(f, implicit, little, defer_size=0), None)
    except Exception:  # noqa: BLE001 - the end of the file within an encapsulated fragment
        element = None
    if element is None or element.tag not in PIXEL_TAGS:
        return "it ends within its pixel data"
    if element.length != UNDEFINED_LENGTH and element.value_tell + element.length > size:
        return f"its pixel data are cut short ({size - element.value_tell} of {element.length} bytes)"
    return ""


def cause(e: Exception, limit: int = 200) -> str:
    """An exception's message on one line: its first sentence, never cut within a word."""
    text = " ".join(str(e).split()) or type(e).__name__
    text = re.split(r"(?<=[a-z)]\.)\s| - ", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + " ..."
