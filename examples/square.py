"""Example python task: prints the square of its argument."""

import sys

n = int(sys.argv[1])
print(f"{n}^2 = {n * n}")
