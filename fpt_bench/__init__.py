"""The speed benchmark of fpt_core (`fpt bench`): kept beside the library, not in it."""
