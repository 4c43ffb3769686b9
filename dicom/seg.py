"""DICOM SEG out (highdicom): one BINARY segment per structure of the label map, coded in SNOMED CT
where a code exists, referencing the source series and instances; and the structure volumes keyed by
the study and series UIDs (JSON). Reading a SEG back into a label map in world space is here too.

BINARY rather than LABELMAP: every SEG reader (OHIF, 3D Slicer, dcmqi, highdicom) reads BINARY;
LABELMAP (2024) is not yet widely read. The segments do not overlap (they come from the label map),
so the label map is recovered exactly. The patient and study modules are copied from the source
images, as the standard requires of a derived object; nothing else of the patient is written.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.sr.coding import Code

from neoseg.core.hierarchy import Hierarchy, builtin
from neoseg.core.version import neoseg_version
from neoseg.runtime.qc import structure_colours
from neoseg.runtime.volumes import structure_volumes

from .deps import highdicom as hd
from .volume import LPS_TO_RAS, DicomScan

ANATOMY = Code("91723000", "SCT", "Anatomical Structure")
SUBSTANCE = Code("91720002", "SCT", "Body Substance")
OWN = "99NEOSEG"  # private coding scheme (PS3.16 8.2: "99" prefix) for structures SNOMED CT has no code for
# channel name of the built-in dhcp-drawem9 hierarchy -> (category, type, label, related SNOMED structures)
STRUCTURES = {
    "csf": (SUBSTANCE, Code("65216001", "SCT", "Cerebrospinal fluid"), "Extracerebral CSF", ()),
    "cgm": (ANATOMY, Code("40146001", "SCT", "Cerebral cortex"), "Cortical grey matter", ()),
    "wm": (ANATOMY, Code("68523003", "SCT", "Cerebral white matter"), "White matter", ()),
    "ventricles": (ANATOMY, Code("35764002", "SCT", "Brain ventricle"), "Ventricles", ()),
    "cerebellum": (ANATOMY, Code("113305005", "SCT", "Cerebellum"), "Cerebellum", ()),
    "brainstem": (ANATOMY, Code("119238007", "SCT", "Brain stem"), "Brainstem", ()),
    "dgm": (ANATOMY, Code("dgm", OWN, "Deep grey matter"), "Deep grey matter",
            (Code("11000004", "SCT", "Caudate nucleus"), Code("89278009", "SCT", "Putamen"),
             Code("42695009", "SCT", "Thalamus"))),
    "hippocampi_amygdala": (ANATOMY, Code("hip-amy", OWN, "Hippocampi and amygdalae"),
                            "Hippocampi and amygdalae",
                            (Code("5366008", "SCT", "Hippocampus"), Code("4958002", "SCT", "Amygdala"))),
    "background": (ANATOMY, Code("nonbrain", OWN, "Non-brain tissue of the head"), "Non-brain tissue", ()),
}


def segment_codes(name: str, hierarchy: Hierarchy) -> tuple[Code, Code, str, tuple]:
    """Category, type, label and related structures of a channel. The SNOMED CT codes are those of the
    built-in hierarchy's channels; a channel of any other hierarchy, whatever its name, gets a private
    code named after it (its ``csf`` or ``wm`` may hold other structures than drawem9's)."""
    if is_builtin(hierarchy) and name in STRUCTURES:
        return STRUCTURES[name]
    return ANATOMY, Code(name[:16], OWN, name), name, ()


def is_builtin(hierarchy: Hierarchy) -> bool:
    """The built-in dhcp-drawem9 hierarchy: the same channels, values and tree (whatever its name)."""
    return hierarchy.channels == _builtin_channels()


@lru_cache(maxsize=1)
def _builtin_channels() -> tuple:
    return builtin().channels


def _leaves(hierarchy: Hierarchy) -> list[int]:
    """The channels that become segments: the label map's leaves, less the outside."""
    return [i for i in hierarchy.leaves if i != hierarchy.outside_channel]



def build_seg(read: DicomScan, labels: np.ndarray, info, equipment: dict | None = None):
    """The highdicom Segmentation of ``labels`` (the label map on ``read``'s grid)."""
    hierarchy = info.hierarchy
    numbers = np.zeros(labels.shape, np.uint16)
    algorithm = hd.AlgorithmIdentificationSequence(name="neoseg", family=Code("123109", "DCM",
                                                                                "Artificial Intelligence"),
                                                   version=neoseg_version(), source="neoseg")
    colours = structure_colours(hierarchy)  # as the QC pictures draw them
    descriptions = []
    for number, i in enumerate(_leaves(hierarchy), 1):
        channel = hierarchy.channels[i]
        numbers[np.isin(labels, list(channel.values))] = number
        category, kind, label, related = segment_codes(channel.name, hierarchy)
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=label, segmented_property_category=category,
            segmented_property_type=kind, algorithm_type="AUTOMATIC", algorithm_identification=algorithm,
            tracking_uid=hd.UID(), tracking_id=channel.name, primary_anatomic_structures=list(related) or None,
            display_color=_colour(colours.get(channel.name))))
    source = read.series
    mask = read.volume.with_array(read.to_volume_order(numbers))
    equipment = equipment or {}
    return hd.seg.Segmentation(
        source_images=source.headers, pixel_array=mask, segmentation_type="BINARY",
        segment_descriptions=descriptions, series_instance_uid=hd.UID(),
        series_number=1000 + (source.number or 0), sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer=equipment.get("manufacturer", "neoseg"),
        manufacturer_model_name=equipment.get("model_name", f"neoseg {info.architecture}"),
        software_versions=neoseg_version(), device_serial_number=equipment.get("serial", "0"),
        content_label="NEOSEG", content_description=f"neoseg {hierarchy.name} segmentation",
        series_description=f"neoseg segmentation of series {source.number}"[:64])


def _colour(hex_rgb: str | None):
    if not hex_rgb:
        return None
    return hd.color.CIELabColor.from_rgb(*(int(hex_rgb[k:k + 2], 16) for k in (1, 3, 5)))


def write_seg_outputs(read: DicomScan, labels: np.ndarray, info, seg_path: Path, uids_path: Path,
                      equipment: dict | None = None):
    """Write the SEG and the UID-keyed volumes; returns the SEG dataset."""
    seg = build_seg(read, labels, info, equipment)
    seg.save_as(seg_path)
    Path(uids_path).write_text(json.dumps(volumes_record(read, labels, info, seg), indent=2) + "\n")
    return seg


def volumes_record(read: DicomScan, labels: np.ndarray, info, seg) -> dict:
    """Structure volumes keyed by study and series UIDs; no patient data."""
    hierarchy = info.hierarchy
    first = read.series.headers[0]
    volumes = structure_volumes(labels, read.scan.zooms, hierarchy)
    return {
        "StudyInstanceUID": str(first.StudyInstanceUID), "SeriesInstanceUID": read.series.uid,
        "SeriesNumber": read.series.number, "SeriesDescription": read.series.description,
        "Segmentation": {"SeriesInstanceUID": str(seg.SeriesInstanceUID), "SOPInstanceUID": str(seg.SOPInstanceUID)},
        "Hierarchy": hierarchy.name, "Model": {"architecture": info.architecture, "config_digest": info.config_digest},
        "Volumes": [{"structure": v.structure, "label": v.label, "voxels": v.voxels, "volume_ml": round(v.ml, 4),
                     "code": _code_text(v.structure, hierarchy)} for v in volumes],
    }


def _code_text(name: str, hierarchy: Hierarchy) -> str | None:
    i = hierarchy.index(name)
    if i not in _leaves(hierarchy):
        return None  # a parent (TCV) or the outside: no segment
    kind = segment_codes(name, hierarchy)[1]
    return f"{kind.scheme_designator}:{kind.value}"


def read_seg(path: str | Path, hierarchy: Hierarchy) -> nib.Nifti1Image:
    """A neoseg SEG read back with highdicom as a label map (the hierarchy's values) with a RAS affine;
    voxels of no segment get the outside value."""
    seg = hd.seg.segread(str(path))
    volume = seg.get_volume(combine_segments=True, relabel=False)
    lut = np.zeros(max(int(d.SegmentNumber) for d in seg.SegmentSequence) + 1, hierarchy.label_dtype)
    outside = hierarchy.outside_channel
    lut[0] = 0 if outside is None else hierarchy.channels[outside].value
    for item in seg.SegmentSequence:
        lut[int(item.SegmentNumber)] = hierarchy.channels[hierarchy.index(str(item.TrackingID))].value
    return nib.Nifti1Image(lut[np.asarray(volume.array)], LPS_TO_RAS @ np.asarray(volume.affine))
