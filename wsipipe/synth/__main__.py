"""``python -m wsipipe.synth --out DIR ...``: the same as ``wsipipe synth``."""

import sys

from wsipipe.cli import main

if __name__ == "__main__":
    sys.argv = [sys.argv[0], "synth", *sys.argv[1:]]
    main()
