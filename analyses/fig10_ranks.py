"""Figure 10 of arXiv 2505.15624: ranks of E, W and EW over training.

Numerical rank (singular values above 1 % of the largest) and effective rank of the embedding E,
the first layer W and their product EW at every checkpoint, for Adam, Adam-LR and Adam with weight
decay 0.005 on (a + b) mod 97.

Usage:
    python analyses/fig10_ranks.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig10_ranks.png and DIR/fig10_ranks.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig10_ranks"))
