"""Neural Turing Machine (Graves et al. 2014): model, tasks, training and evaluation.

The model is written so that one time step is a pure function of
(parameters, input, state) -> (output, next state); see :mod:`ntm_serve.training.model`.
"""
