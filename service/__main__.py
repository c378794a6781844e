"""`python -m service`: the same as the `facevae-serve` console script."""

from service.api.cli import main

if __name__ == "__main__":  # uvicorn's worker processes re-import this module; only the parent may serve
    main()
