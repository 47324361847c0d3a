"""``callgate lint``: every problem in a set of policy files, as findings.

The loaders stop at the first broken file (they raise :class:`InputError`);
lint must instead report everything and keep going. So it reads documents one
by one, turns schema problems into findings (severity error), and runs the
semantic checks on whatever did parse. Some checks need the raw document (a
port *written* without a protocol looks the same as ``protocol: TCP`` once
parsed), so parsed objects keep their document.

Modules, each depending only on those above it:

* ``rules``: the rule table (ids, severities, documentation);
* ``findings``: :class:`Finding` and :class:`LintResult`;
* ``config``: :class:`LintConfig`, finding the config file, suppressions;
* ``places``: where namespaces and findings are written, found by a helper process
  for big inputs while the checks run;
* ``linter``: :class:`Linter`, which reads documents into items and collects findings;
* ``checks``: the semantic checks, by concern;
* ``run``: :func:`run.lint` for files and :func:`run.run_checks` for the controller;
* ``report``: results as text, JSON, SARIF and JUnit XML.
"""
