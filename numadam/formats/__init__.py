"""Storage formats of optimizer state (and bfloat16 parameters): see the README."""
