"""One experiment: its context, the key inputs of its published stages, the three stages, their composition
(``Experiment``, ``run_experiment``) and its typed result.
"""
