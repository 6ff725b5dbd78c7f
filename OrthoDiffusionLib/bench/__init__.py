"""Performance measurements (``orthodiffusion bench``): timing helpers and the benchmark subjects."""
