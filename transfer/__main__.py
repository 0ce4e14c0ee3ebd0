"""`python -m transfer --config FILE [key=value ...]`: one arm, as run_transfer.py (the form the
comparison's runner launches, under python, accelerate launch -m or torchrun -m)."""
from .cli import exit_now, main

exit_now(main())
