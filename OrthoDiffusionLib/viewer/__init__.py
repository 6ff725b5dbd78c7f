"""Browser viewer (``orthodiffusion view``, extra ``viewer``): a trame-slicer app over the library's calls.

Modules: :mod:`.app` (the trame app), :mod:`.scene` (MRML scene: series, segmentations, per-structure display),
:mod:`.results` (finished result folders), :mod:`.background` (worker thread with progress and cancel),
:mod:`.folders` (server-side folder picker). The subcommand is :mod:`OrthoDiffusionLib.cli.view`; the trame/Slicer
packages load when the viewer starts.
"""
