"""``python -m dlibplus.cli`` (what ``torchrun ... -m dlibplus.cli finetune`` runs)."""
from . import main

main()
