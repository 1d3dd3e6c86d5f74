import sys
from pathlib import Path

# Test helpers (parity harness, fixture builders) import by module name.
sys.path.insert(0, str(Path(__file__).parent / "schedulers"))
sys.path.insert(0, str(Path(__file__).parent))
