"""The semantic checks, by concern; each reports findings through the :class:`Linter`.

* ``document``: what is written, before parsing normalises it (no inventory needed);
* ``inventory``: selectors, named ports and default-deny against the pods;
* ``redundancy``: rules and policies that change nothing, exactly over an
  inventory or syntactically without one.
"""
