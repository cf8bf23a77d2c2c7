"""Figure 8 of arXiv 2505.15624: token frequencies of each split strategy.

How often each operand value appears in the training and test sets of the random, uniform and
skewed splits of the pairs mod 97. No training is needed.

Usage:
    python analyses/fig08_token_frequencies.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/fig08_token_frequencies.png and DIR/fig08_token_frequencies.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("fig08_token_frequencies"))
