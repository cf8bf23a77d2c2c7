"""Extension: Fourier sparsity of the embedding over training.

Gini coefficient of the embedding spectrum and the number of frequencies that hold 95 % of its
energy at every checkpoint, for the embedding MLP (Adam, Adam-LR) and the one-layer transformer
(AdamW, AdamW-LR, adaptive).

Usage:
    python analyses/ext3_fourier_sparsity.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/ext3_fourier_sparsity.png and DIR/ext3_fourier_sparsity.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("ext3_fourier_sparsity"))
