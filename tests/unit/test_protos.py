import subprocess
import sys

from tests.conftest import REPO


def test_generated_grpc_stubs_match_the_protos() -> None:
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "gen_protos.py"), "--check"], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
