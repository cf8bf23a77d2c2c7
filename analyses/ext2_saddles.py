"""Extension: saddle points of the bilinear E–W coupling over training.

Smallest and largest Hessian eigenvalues of the training loss over E, W and both together, at up
to 16 checkpoints of the Adam and Adam-LR runs on (a + b) mod 97, with the saddle verdict of each
checkpoint next to the accuracy curves and the grok step.

Usage:
    python analyses/ext2_saddles.py [--quick] [--seeds N] [--out DIR] [--runs DIR]

Writes DIR/ext2_saddles.png and DIR/ext2_saddles.json (the numbers behind the figure). Runs already
trained under --runs with the same config are reused; ``grokinterp figures`` draws every figure.
"""

import sys

from grokinterp.figures import script_main

if __name__ == "__main__":
    sys.exit(script_main("ext2_saddles"))
