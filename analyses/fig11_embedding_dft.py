"""Figure 11 of arXiv 2505.15624: the Fourier spectrum of the trained embedding.

DFT of the embedding along the vocabulary axis (L2 norm over the embedding dimension) at the end of
training, for addition, division and addition with Adam-LR; below it, the sorted spectra of all
seeds and their Gini coefficients.

Usage:
    python analyses/fig11_embedding_dft.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig11_embedding_dft.png and DIR/fig11_embedding_dft.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig11_embedding_dft"))
