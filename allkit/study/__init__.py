"""Everything around the paper's method, which the core (``allkit.data`` … ``allkit.explain``) never imports:

- running it: :mod:`~allkit.study.workspace` (where data and runs live), :mod:`~allkit.study.profiles`
  (how much is run), :mod:`~allkit.study.recipes` (how the CNN is fine-tuned), :mod:`~allkit.study.run`
  (``allkit reproduce``: the whole method, written to a run folder), :mod:`~allkit.study.synthetic` and
  :mod:`~allkit.study.download` (data to run on); process settings for speed are :mod:`allkit.perf`, which
  deployment uses too;
- beyond the paper: :mod:`~allkit.study.experiments` (controlled fine-tunes), :mod:`~allkit.study.views`
  (test-time views), :mod:`~allkit.study.pitfalls`, :mod:`~allkit.study.calibration`,
  :mod:`~allkit.study.recipe_study`, :mod:`~allkit.study.backbones`;
- showing it: :mod:`~allkit.study.plots`, :mod:`~allkit.study.book` (what every chapter does first).
"""
