"""Incremental compile: one endpoint change in, the node's new RuleSet out.

A fresh :class:`~callgate.compiler.compile.Compiler` costs ~0.4 s on the
50,000-pod target cluster; the performance aim is 20 ms from an event to the
kernel. Most events are pods elsewhere in the cluster appearing, going away or
being relabelled, and such a pod can only change the node's RuleSet through
the **address sets** and **(address, port) sets** whose peers select it: chains
are built from local pods and policies only, except that a rule whose set is
empty is left out (so a set becoming empty or non-empty re-filters the chains
that use it). :class:`IncrementalCompiler` therefore

* compiles the node once in full, recording through a :class:`SetBuilder`
  subclass every set a rule could use (empty or not), the peers it is the
  union of, and each chain's candidate rules;
* indexes the selector peers of those sets by the namespaces they admit, so
  a change looks at the few peers of the pod's namespace;
* keeps per address set a reference count per address (how many member pods
  hold it) and the union as maximal intervals with their element text and
  address count, and patches them point by point: adding an address joins at
  most two neighbours, removing one splits at most one interval;
* keeps per (address, port) set each endpoint's contribution and a count per
  pair, elements in order;
* builds the new RuleSet from the same objects as before except the sets (and
  endpoints, when a set flipped between empty and non-empty) that changed, so
  the compositional :meth:`RuleSet.digest` hashes only those.

A pod on this node that a policy selects (or a cluster policy's subject
holds) changes its own chains as well, and only its own: after its sets are
patched as above, its chains are compiled again on their own
(:mod:`.local`), against the kept sets; chains' candidate rules are
remembered by what determines them, so a replica of an application already
running here compiles nothing.

A NetworkPolicy or App added, removed or changed (through
:meth:`IncrementalCompiler.sync`) changes the chains of the local pods it
selects, before or after, and nothing else: those are compiled again the same
way.

Everything it is not sure about falls back to a full compile of the current
inventory, which also re-primes the state: an unknown or duplicate endpoint
key, an inventory with duplicate keys, more changes in one snapshot than
patching pays for, a change of cluster policies, namespaces or nodes
(:meth:`IncrementalCompiler.rebase`).

The result is always equal (``==`` and digest) to ``Compiler(policies,
inventory).compile(node)`` of the current inventory; tests/test_incremental_compile.py
checks that on random inputs and change sequences.

Modules, by concern:

* :mod:`.setstate`: the reference-counted state of one address set and of
  one (address, port) set, patched one endpoint at a time;
* :mod:`.priming`: the full compile, recorded, and the state built from it
  (and the RuleSet rebuilt from that state);
* :mod:`.snapshot`: which endpoints a new snapshot changed (the agent's path);
* :mod:`.local`: one local endpoint's chains compiled again against the state;
* :mod:`.compiler`: :class:`~callgate.compiler.incremental.compiler.IncrementalCompiler`,
  which decides between patching and compiling in full.
"""
