"""The ``dicom`` extra's libraries, imported once, with an error that names the extra."""

try:
    import highdicom
    import pydicom
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(f"DICOM support needs the dicom extra ({e.name} is missing); install it with "
                      f"pip install -e '.[dicom]' in the neoseg checkout") from None

__all__ = ["highdicom", "pydicom"]
