"""jaxmed.tasks: one package per clinical task, each composing the layers below.

A task holds what only it needs (its data assembly, scoring, decisions,
evaluation, study and outputs) and imports the core layers (``jaxmed.io``,
``data``, ``models``, ``likelihood``, ``losses``, ``train``, ``metrics``,
``plots``); it never imports another task, and no layer imports a task.

* :mod:`jaxmed.tasks.scan_quality`: scan-quality classification of MRI by a
  VAE's marginal likelihood log p(x).
"""
