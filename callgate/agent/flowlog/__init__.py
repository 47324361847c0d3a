"""Flow records: what the datapath decided for new connections, naming the policies.

``record`` is the model and its JSON Lines form (read back by ``callgate
flows``), ``writer`` opens and appends to ``--flow-log``, ``decode`` turns
logged packets into records, ``service`` runs the NFLOG reader in the agent.
"""
