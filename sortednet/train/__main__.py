"""`python -m sortednet.train` is `sortednet-train`."""

from ..cli.train import main

main()
