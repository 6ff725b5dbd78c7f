"""Browser viewer (``orthodiffusion view``, extra ``viewer``): a trame-slicer app over the library's calls.

Modules: :mod:`.app` (the trame app), :mod:`.scene` (MRML scene: series, segmentations, per-structure display),
:mod:`.results` (finished result folders), :mod:`.background` (worker thread with progress and cancel),
:mod:`.folders` (server-side folder picker), :mod:`.cli` (the subcommand). Only :mod:`.cli` is imported by the
``orthodiffusion`` command; the trame/Slicer packages load when the viewer starts.
"""
