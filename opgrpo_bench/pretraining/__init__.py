"""Building the shipped assets of the CPU digits tasks (``opgrpo_bench/assets``): the project's own base models
and digit classifiers, trained from scikit-learn's bundled digits, deterministically on one CPU thread.

Run through ``scripts/build_*.py``; nothing at training or evaluation time imports this package (the tasks
load the saved folders through :mod:`opgrpo_bench.backbones.digits`, the rewards their classifiers through
:mod:`opgrpo_bench.rewards.digits`).

- :mod:`~opgrpo_bench.pretraining.common`: the data split, the model components, one flow-matching step
  (through the backbone's own ``velocity``) and saving a base-model folder.
- :mod:`~opgrpo_bench.pretraining.classifiers`: the reward classifier and the gold classifier.
- :mod:`~opgrpo_bench.pretraining.digits`, ``digits_pair``, ``digits_number``, ``digits_video``: each task's
  base model (its data, captions and schedule) and its ``build_*_assets``.
"""
