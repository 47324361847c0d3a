"""nftables backend: the RuleSet IR as one libnftables JSON transaction.

* :mod:`.layout`: the table callgate owns (names, constants, the digest, the
  hash-or-interval choice per set);
* :mod:`.commands`: IR → libnftables JSON commands in that layout;
* :mod:`.text`: JSON → nft text, and the normal form live and desired tables
  are compared in;
* :mod:`.transaction`: the transaction as a value, and the full replacement;
* :mod:`.update`: the incremental planner (only what changed, one transaction);
* :mod:`.enforcer`: :class:`~.enforcer.NftablesEnforcer`, which decides
  between no-op, incremental and full;
* :mod:`.kernel`: the one door to the kernel (:class:`~.kernel.NftKernel`,
  :class:`~.kernel.LibNftables`); :mod:`.fake`: an in-memory stand-in.
"""
