"""Figure 4 of arXiv 2505.15624: random, uniform and skewed train/test splits.

Test accuracy for the three split strategies at batch sizes 64, 128 and 512 on four operations,
Adam at lr 0.001. This is the most expensive figure: 36 conditions per seed of up to 8,000 steps.

Usage:
    python analyses/fig04_split_strategies.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig04_split_strategies.png and DIR/fig04_split_strategies.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig04_split_strategies"))
