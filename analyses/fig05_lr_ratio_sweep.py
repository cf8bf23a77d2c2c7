"""Figure 5 of arXiv 2505.15624: the embedding learning-rate ratio c.

Test accuracy on (a + b) mod 97 for c = η_E / η_W in {0.5, 1, 4, 8, 10, 16, 24, 32}, and the
steps to test accuracy ≥ 0.99 against c.

Usage:
    python analyses/fig05_lr_ratio_sweep.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig05_lr_ratio_sweep.png and DIR/fig05_lr_ratio_sweep.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig05_lr_ratio_sweep"))
