"""Training jobs on the one loop.

    loop.py        fit(): THE optimizer-step loop (accumulation, clipping, schedule, logging, evaluation,
                   keep-best, checkpoints, preemption), driven by a step function and a batch source
    optim.py       the optimizer and schedule from a recipe's `train:` section
    checkpoint.py  run folders, resumable checkpoints, the run lock
    reward.py      `gpmctl train-rm`: BT / GPM on tokens (TokenPairs) or on cached features
    features.py    a frozen backbone's cached features as a batch source (FeaturePairs)
    gpo.py         `gpmctl train-gpo`: sample, judge, optimise per iteration (and the tiny policy's warm-up)
    gpo_loss.py    the GPO / SPPO objective
The engine that runs the processes is gpmctl.engine.
"""
