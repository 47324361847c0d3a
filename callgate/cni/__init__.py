"""``callgate-cni``: a chained CNI plugin that holds a pod's start until the
callgate agent on the node enforces its policy (see :mod:`callgate.cni.plugin`)."""
