"""callgate's CNI start gate, agent side: the requests the ``callgate-cni``
plugin forwards over the agent's unix socket (:mod:`callgate.cni.request`) and
the installer that puts the plugin into a node's conflist
(:mod:`callgate.cni.install`). The plugin itself is a small static C program,
``cni-plugin/callgate-cni.c``: on the host there is no Python to run."""
