"""A frozen copy of the compiler as it was before performance work (commit be56ea6).

The optimised compiler must produce the same IR, byte for byte, as this one;
tests/test_compile_equivalence.py compares their digests on seeded synthetic
clusters and on hypothesis-generated inputs. Do not optimise this package:
its only job is to stay the slow, obviously-correct reference.
"""
