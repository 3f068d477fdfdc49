"""`python -m realign.cli …`: the `realign` command."""

from . import main

if __name__ == "__main__":
    main()
