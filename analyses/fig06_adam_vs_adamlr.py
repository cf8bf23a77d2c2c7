"""Figure 6 of arXiv 2505.15624: Adam vs Adam-LR on four operations.

Train and test accuracy of the embedding MLP with Adam and with Adam-LR (the embedding's learning
rate 10 times the rest) on addition, multiplication, division and a² + b² mod 97, lr 0.01,
batch 512.

Usage:
    python analyses/fig06_adam_vs_adamlr.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig06_adam_vs_adamlr.png and DIR/fig06_adam_vs_adamlr.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig06_adam_vs_adamlr"))
