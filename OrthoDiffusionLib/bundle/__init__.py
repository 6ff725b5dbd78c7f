"""Model bundles: the file format, the registry of installed models, and export from training runs."""
