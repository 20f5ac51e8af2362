#!/usr/bin/env python3
"""Run the surgery CLI from a checkout without installing: `python cli.py inspect model.safetensors`."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from surgery.cli import main  # noqa: E402

if __name__ == "__main__":
    main()
