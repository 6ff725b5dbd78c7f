"""The 3D Slicer bridge: MRML conversions and the child process that runs the library's commands."""
