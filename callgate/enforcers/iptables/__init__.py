"""iptables backend: the RuleSet IR as ipsets plus iptables/ip6tables chains.

* :mod:`.layout`: what callgate owns (names, limits, quoting, the digest);
* :mod:`.sets`: IR sets as ipsets; :mod:`.rules`: IR chains as
  ``iptables-restore`` lines; :mod:`.transaction`: both as one value;
* :mod:`.live`: the live state read back into the same values;
* :mod:`.steps`: one apply as batches for ``ipset`` and ``iptables-restore``;
* :mod:`.enforcer`: :class:`~.enforcer.IptablesEnforcer`, which runs them in
  an order that can be undone;
* :mod:`.kernel`: the door to the tools (argv lists only, never a shell);
  :mod:`.fake`: an in-memory stand-in.
"""
