"""Semi-supervised learning: the algorithms' losses (algorithms.py) and one jitted train step
that draws the weak and strong views on the device (step.py).

The package's __init__ imports nothing, so that preflight can read the algorithms' names and
settings (algorithms.py imports no trainer) without an import cycle through step.py.
"""
