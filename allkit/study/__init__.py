"""Everything around the paper's method, which the core (``allkit.data`` … ``allkit.explain``) never imports:

- running it: :mod:`~allkit.study.config` (one frozen configuration: presets and recipes),
  :mod:`~allkit.study.prepare` (the split, cache and model a configuration runs on), :mod:`~allkit.study.store`
  (``run(config)``: each fine-tune trained once, in one folder format; ``allkit reproduce``),
  :mod:`~allkit.study.score` (the one scorer), :mod:`~allkit.study.workspace` (where data and runs live),
  :mod:`~allkit.study.synthetic` and :mod:`~allkit.study.download` (data to run on);
- beyond the paper: :mod:`~allkit.study.views` (test-time views), :mod:`~allkit.study.pitfalls`,
  :mod:`~allkit.study.calibration`, :mod:`~allkit.study.recipe_study`, :mod:`~allkit.study.across_study`,
  :mod:`~allkit.study.backbones`;
- showing it: :mod:`~allkit.study.plots`, :mod:`~allkit.study.book` (what every chapter does first).
"""
