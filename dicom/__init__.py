"""DICOM at the scanner: series in (``series``, ``volume``), DICOM SEG and volumes out (``seg``),
and a Storage SCP node (``node``). Needs the ``dicom`` extra (pydicom, highdicom, pynetdicom)."""
