"""distributed.py for one process (the two-process Gloo run is in test_code_paths.py and test_train.py)."""
import torch

import distributed


def test_one_process_is_rank_0_of_1_and_agreeing_is_the_identity(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    assert distributed.setup("cpu") == (0, 1, torch.device("cpu"))
    loss, flags = distributed.agree(torch.tensor(0.25), (False, True), 1)
    assert loss == 0.25 and isinstance(loss, float) and flags == (False, True)
    distributed.check_replicas(torch.nn.Linear(2, 2), 0, 1)
    distributed.end(1)
