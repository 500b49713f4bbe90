"""The lab and the tools, built on the library and never the other way round.

``battery`` writes the experiment directory the teaching labs describe;
``bench`` times the library against naive NumPy, SciPy and PyTorch;
``diagnose`` finds the rows of a logits file that will blow up a loss;
"""
