"""Compile the policy model into a per-node RuleSet IR (see ``ir.py``)."""

from callgate.compiler.compile import Compiler, compile_node
from callgate.compiler.incremental.compiler import IncrementalCompiler
from callgate.compiler.ir import RuleSet

__all__ = ["Compiler", "IncrementalCompiler", "RuleSet", "compile_node"]
