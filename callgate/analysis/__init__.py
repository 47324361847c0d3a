"""Analysis without a kernel: connectivity matrices, diffs, lint, pictures, conversion.

Everything here works on the policy model (``callgate.policy``) and follows the
reference semantics of :class:`callgate.policy.Evaluator`; the fast paths
(equivalence classes, bitsets) are checked against it in the tests.
"""
