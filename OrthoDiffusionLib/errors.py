"""Typed errors of OrthoDiffusion.

Every error raised for bad user input is an :class:`OrthoDiffusionError`. Its ``str()`` is ONE line that names the
offending file (or folder) and the problem, so the CLI can print it as-is and GUIs can show it in a banner.
"""
from __future__ import annotations

import os
from typing import Optional


class OrthoDiffusionError(Exception):
    """Base class of all errors the library raises on purpose.

    Args:
        message: what is wrong, in words a radiologist can act on.
        path: the file or folder concerned (shown first in the message), if any.
    """

    def __init__(self, message: str, path: Optional[os.PathLike | str] = None):
        self.path = None if path is None else os.fspath(path)
        self.problem = message
        text = f"{self.path}: {message}" if self.path is not None else message
        super().__init__(" ".join(str(text).split()))  # always one line


class InputError(OrthoDiffusionError):
    """Bad input data (files, folders, volumes)."""


class MissingPathError(InputError):
    """A file or folder that was asked for does not exist."""


class NoDicomError(InputError):
    """A folder holds no readable DICOM image series."""


class NotMRError(InputError):
    """A DICOM series is not MR (e.g. CT, secondary capture, structured report)."""


class CorruptFileError(InputError):
    """A file cannot be parsed (truncated, not the format its name says, unreadable pixel data)."""


class InconsistentSeriesError(InputError):
    """A series has inconsistent slice spacing, mixed orientations, or mixed image sizes."""


class ObliqueSeriesError(InputError):
    """A series is too oblique to be assigned to the sagittal, coronal or axial plane."""


class NotVolumeError(InputError):
    """An image is 2D (a single slice) or otherwise not a 3D volume."""


class InvalidVolumeError(InputError):
    """A volume holds NaN/Inf values or is constant (no contrast)."""


class TooFewSlicesError(InputError):
    """A series has fewer slices than the model needs (strict mode)."""


class AnatomyMismatchError(InputError):
    """A series' metadata names another body part than the model's anatomy (e.g. a brain MR for a knee model)."""


class MissingPlaneError(InputError):
    """A plane the caller needs is missing from the exam."""


class UnsafeFileError(OrthoDiffusionError):
    """A file would need arbitrary code to load (e.g. a pickle with a ``__reduce__`` payload); it was not loaded."""


class WeightsMismatchError(OrthoDiffusionError):
    """Weights do not fit the network (missing/unexpected keys or wrong shapes)."""


class BundleError(OrthoDiffusionError):
    """A model bundle is malformed, of an unknown version, or fails its integrity check."""


class CancelledError(OrthoDiffusionError):
    """Work was cancelled by the user."""


class AmbiguousSeriesError(InputError):
    """A path holds several series (or echoes) and the caller did not say which one to read."""


class MixedPatientsError(InputError):
    """The series of one exam (or the slices of one series) belong to different patients or studies."""
